/**
 * The lab navigator (left sidebar): every lab with its objectives, time and progress,
 * and a "continue where you left off" button. Data: GET {base}/infer-lab/labs.
 */
import { Widget } from '@lumino/widgets';

import { ILab, ILabsReply } from './api';
import {
  formatMinutes,
  overallProgress,
  progressFraction,
  progressLabel
} from './format';

export interface INavigatorOptions {
  fetchLabs: () => Promise<ILabsReply>;
  open: (path: string) => void;
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function progressBar(fraction: number): HTMLElement {
  const bar = el('div', 'jp-InferLab-bar');
  const fill = el('div', 'jp-InferLab-barFill');
  fill.style.width = `${Math.round(fraction * 100)}%`;
  bar.appendChild(fill);
  return bar;
}

export class LabNavigator extends Widget {
  constructor(private options: INavigatorOptions) {
    super();
    this.id = 'infer-lab-navigator';
    this.addClass('jp-InferLab-navigator');
    this.title.caption = 'infer-lab: labs';
    this.body = el('div', 'jp-InferLab-navBody');
    const header = el('div', 'jp-InferLab-navHeader');
    header.appendChild(el('h2', 'jp-InferLab-navTitle', 'infer-lab'));
    const refresh = el('button', 'jp-InferLab-refresh jp-mod-styled', 'Refresh');
    refresh.title = 'Reload the labs and your progress';
    refresh.onclick = () => void this.refresh();
    header.appendChild(refresh);
    this.node.appendChild(header);
    this.node.appendChild(this.body);
  }

  private body: HTMLElement;
  labs: ILab[] = [];
  continueId: string | null = null;

  protected onAfterShow(): void {
    void this.refresh();
  }

  protected onAfterAttach(): void {
    void this.refresh();
  }

  /** Fetch the catalogue and progress again, and redraw. */
  async refresh(): Promise<void> {
    try {
      const reply = await this.options.fetchLabs();
      this.labs = reply.labs;
      this.continueId = reply.continue;
      this.render();
    } catch (reason) {
      this.body.replaceChildren(
        el('div', 'jp-InferLab-error', `Could not load the labs: ${reason}`)
      );
    }
  }

  private render(): void {
    const nodes: HTMLElement[] = [];
    const overall = overallProgress(this.labs);
    const summary = el('div', 'jp-InferLab-summary');
    summary.appendChild(el('span', '', `${progressLabel(overall)} passed`));
    summary.appendChild(progressBar(progressFraction(overall)));
    nodes.push(summary);

    const next = this.labs.find(l => l.id === this.continueId);
    if (next && next.path) {
      const resume = el('button', 'jp-InferLab-continue jp-mod-styled jp-mod-accept');
      resume.textContent = `Continue: Lab ${next.number} · ${next.title}`;
      resume.onclick = () => this.options.open(next.path as string);
      nodes.push(resume);
    }
    if (!this.labs.length) {
      nodes.push(el('div', 'jp-InferLab-empty', 'No lab notebooks found under the server root.'));
    }
    const list = el('ul', 'jp-InferLab-labs');
    for (const lab of this.labs) {
      list.appendChild(this.renderLab(lab));
    }
    nodes.push(list);
    this.body.replaceChildren(...nodes);
  }

  private renderLab(lab: ILab): HTMLElement {
    const item = el('li', 'jp-InferLab-lab');
    item.dataset.lab = lab.id;
    if (lab.progress.complete) {
      item.classList.add('jp-mod-complete');
    }
    const head = el('div', 'jp-InferLab-labHead');
    const title = el('a', 'jp-InferLab-labTitle', `Lab ${lab.number} · ${lab.title}`);
    title.href = '#';
    title.title = lab.path ? `Open ${lab.path}` : 'This notebook is outside the server root';
    title.onclick = event => {
      event.preventDefault();
      if (lab.path) {
        this.options.open(lab.path);
      }
    };
    head.appendChild(title);
    item.appendChild(head);

    const meta = el('div', 'jp-InferLab-labMeta');
    const time = formatMinutes(lab.minutes);
    meta.appendChild(el('span', 'jp-InferLab-time', time));
    meta.appendChild(el('span', 'jp-InferLab-progressText', progressLabel(lab.progress)));
    item.appendChild(meta);
    item.appendChild(progressBar(progressFraction(lab.progress)));

    if (lab.objectives.length) {
      const details = el('details', 'jp-InferLab-objectives');
      details.open = lab.id === this.continueId; // the lab to do next shows its goals
      details.appendChild(el('summary', '', 'What you will learn'));
      const ol = el('ol', '');
      for (const o of lab.objectives) {
        // Objectives are markdown; show them as text, without the emphasis marks.
        ol.appendChild(el('li', '', o.replace(/[*_`]/g, '').replace(/\$([^$]*)\$/g, '$1')));
      }
      details.appendChild(ol);
      item.appendChild(details);
    }
    return item;
  }
}
