/**
 * The server routes, always joined to the server's base URL, so the extension works
 * under JupyterHub's /user/<name>/ prefix exactly as at the root.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IProgress } from './format';

export const NAMESPACE = 'infer-lab';

export interface ILabProgress extends IProgress {
  status: { [exercise: string]: string };
  updated: string | null;
  complete: boolean;
}

export interface ILab {
  id: string;
  file: string;
  number: string;
  title: string;
  objectives: string[];
  minutes: number | null;
  exercises: string[];
  path: string | null;
  progress: ILabProgress;
}

export interface ILabsReply {
  labs: ILab[];
  continue: string | null;
  progress_file: string;
}

export interface IHardware {
  kind: 'cpu' | 'gpu';
  device: string;
  cpu: string;
  cores: number | null;
  memory: { used: number | null; total: number | null };
  gpus: { name: string; memory_used: number | null; memory_total: number | null }[];
}

/** The URL of one route under the server's base URL. */
export function routeUrl(baseUrl: string, endpoint: string): string {
  return URLExt.join(baseUrl, NAMESPACE, endpoint);
}

/** GET one route as JSON; throws ServerConnection.ResponseError on a non-2xx reply. */
export async function requestAPI<T>(
  endpoint: string,
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const response = await ServerConnection.makeRequest(
    routeUrl(settings.baseUrl, endpoint),
    {},
    settings
  );
  if (!response.ok) {
    throw new ServerConnection.ResponseError(response, await response.text());
  }
  return (await response.json()) as T;
}
