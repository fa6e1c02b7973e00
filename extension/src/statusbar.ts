/**
 * The status bar item: the device (CPU model or GPU name) and the memory in use, from
 * GET {base}/infer-lab/hardware, polled while the page is visible.
 */
import { Widget } from '@lumino/widgets';

import { IHardware } from './api';
import { formatBytes, hardwareLabel } from './format';

export const POLL_MS = 5000;

export class HardwareStatus extends Widget {
  constructor(private fetchHardware: () => Promise<IHardware>) {
    super();
    this.addClass('jp-InferLab-status');
    this.node.textContent = 'infer-lab: …';
    void this.update_();
    this.timer = window.setInterval(() => {
      if (document.visibilityState === 'visible') {
        void this.update_();
      }
    }, POLL_MS);
  }

  private timer: number;

  private async update_(): Promise<void> {
    try {
      const h = await this.fetchHardware();
      this.node.textContent = hardwareLabel(h);
      const gpus = h.gpus.map(g => `${g.name}: ${formatBytes(g.memory_used)} used`).join('; ');
      this.node.title =
        `${h.cpu} (${h.cores ?? '?'} cores); system memory ` +
        `${formatBytes(h.memory.used)} of ${formatBytes(h.memory.total)} in use` +
        (gpus ? `; ${gpus}` : '; no GPU');
    } catch (reason) {
      this.node.textContent = 'infer-lab: hardware unknown';
      this.node.title = String(reason);
    }
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }
}
