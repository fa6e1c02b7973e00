/**
 * The frontend end of the telemetry comm: one TelemetryHub for the whole app.
 *
 * Protocol (kernel side: infer_lab/telemetry.py):
 *   kernel  -> frontend  comm_open on target "infer_lab.telemetry" when infer_lab is
 *                        imported (the hub registers that target on every kernel)
 *   frontend -> kernel   {"type": "subscribe", "on": bool, "client": id} whenever the
 *                        monitor opens or closes; the kernel sends only while some
 *                        client is subscribed
 *   kernel  -> frontend  {"events": [...], "memory": {...}, "t": ...} at most every 250 ms
 *
 * After a page reload the kernel's comm still exists: `requestCommInfo` finds it and
 * `createComm(target, id)` reattaches to it without opening a new one.
 */
import { Kernel, KernelMessage } from '@jupyterlab/services';

import { ITelemetryMessage, TARGET, TelemetryStore } from './telemetry';

export class TelemetryHub {
  constructor(readonly store: TelemetryStore) {}

  /** A random id per browser tab, so the kernel can count distinct subscribers. */
  readonly clientId = Math.random().toString(36).slice(2);
  private comms = new Map<string, Kernel.IComm>();
  private kernels = new WeakSet<Kernel.IKernelConnection>();
  private _watching = false;

  get watching(): boolean {
    return this._watching;
  }

  /** Start (monitor open) or stop (monitor closed) the flow from every kernel. */
  setWatching(on: boolean): void {
    this._watching = on;
    this.comms.forEach(comm => this.sendState(comm));
  }

  /** Listen on one kernel connection (idempotent). */
  attach(kernel: Kernel.IKernelConnection | null | undefined): void {
    if (!kernel || this.kernels.has(kernel)) {
      return;
    }
    this.kernels.add(kernel);
    kernel.registerCommTarget(TARGET, comm => this.adopt(comm));
    kernel.disposed.connect(() => this.prune());
    void this.reattach(kernel);
  }

  /** Comms the kernel already holds (a reload, or a kernel opened before this tab). */
  private async reattach(kernel: Kernel.IKernelConnection): Promise<void> {
    try {
      const reply = await kernel.requestCommInfo({ target_name: TARGET });
      const content = reply.content as KernelMessage.ICommInfoReplyMsg['content'];
      if (content.status !== 'ok') {
        return;
      }
      for (const id of Object.keys(content.comms)) {
        if (!this.comms.has(id) && !kernel.hasComm(id)) {
          this.adopt(kernel.createComm(TARGET, id));
        }
      }
    } catch (reason) {
      console.debug('infer-lab: no telemetry comm info', reason);
    }
  }

  private adopt(comm: Kernel.IComm): void {
    console.debug(`infer-lab: telemetry comm ${comm.commId} (watching: ${this._watching})`);
    this.comms.set(comm.commId, comm);
    comm.onMsg = msg => this.store.ingest(msg.content.data as unknown as ITelemetryMessage);
    comm.onClose = () => {
      this.comms.delete(comm.commId);
    };
    this.sendState(comm);
  }

  private sendState(comm: Kernel.IComm): void {
    if (comm.isDisposed) {
      this.comms.delete(comm.commId);
      return;
    }
    try {
      comm.send({ type: 'subscribe', on: this._watching, client: this.clientId });
    } catch (reason) {
      console.debug('infer-lab: telemetry comm gone', reason);
      this.comms.delete(comm.commId);
    }
  }

  /** Drop the comms of kernels that went away. */
  private prune(): void {
    this.comms.forEach((comm, id) => {
      if (comm.isDisposed) {
        this.comms.delete(id);
      }
    });
  }

  get numComms(): number {
    return this.comms.size;
  }
}
