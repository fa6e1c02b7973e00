/**
 * The inference monitor (a main-area panel): live numbers from the kernels' infer_lab
 * code, drawn from a TelemetryStore with plain SVG (no chart library to ship).
 *
 *   tokens/s over time · TTFT and TPOT per finished request · a request timeline
 *   (queued -> prefill -> decode -> done) · KV blocks · speculative acceptance · memory
 */
import { Widget } from '@lumino/widgets';

import { formatBytes, formatMs, formatRate } from './format';
import { IPoint, segments, sparkPath, TelemetryStore } from './telemetry';

const W = 320;
const H = 60;
const SVG = 'http://www.w3.org/2000/svg';

function div(className: string, text?: string): HTMLDivElement {
  const node = document.createElement('div');
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function chart(series: { points: IPoint[]; className: string }[]): SVGSVGElement {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.classList.add('jp-InferLab-chart');
  for (const s of series) {
    const path = document.createElementNS(SVG, 'path');
    path.setAttribute('d', sparkPath(s.points, W, H));
    path.classList.add(s.className);
    svg.appendChild(path);
  }
  return svg;
}

function card(title: string, value: string, testId: string): HTMLDivElement {
  const node = div('jp-InferLab-card');
  node.appendChild(div('jp-InferLab-cardTitle', title));
  const v = div('jp-InferLab-cardValue', value);
  v.dataset.testid = testId;
  node.appendChild(v);
  return node;
}

export class InferenceMonitor extends Widget {
  constructor(private store: TelemetryStore) {
    super();
    this.addClass('jp-InferLab-monitor');
    this.unlisten = store.onChange(() => this.schedule());
    this.render();
  }

  private unlisten: () => void;
  private pending = false;

  /** Redraw at most once per animation frame, however fast messages arrive. */
  private schedule(): void {
    if (this.pending) {
      return;
    }
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      if (!this.isDisposed) {
        this.render();
      }
    });
  }

  dispose(): void {
    this.unlisten();
    super.dispose();
  }

  render(): void {
    const s = this.store;
    const nodes: HTMLElement[] = [];
    if (!s.messages) {
      nodes.push(
        div(
          'jp-InferLab-hint',
          'Waiting for a kernel: run a cell that generates tokens with infer_lab ' +
            '(generate, stream, the serving Engine, speculative_decode).'
        )
      );
    }
    const cards = div('jp-InferLab-cards');
    const lastTtft = s.ttft.length ? s.ttft[s.ttft.length - 1].v : null;
    const lastTpot = s.tpot.length ? s.tpot[s.tpot.length - 1].v : null;
    const rss = s.rss.length ? s.rss[s.rss.length - 1].v : null;
    const gpu = s.gpu.length ? s.gpu[s.gpu.length - 1].v : null;
    cards.append(
      card('tokens/s', formatRate(s.lastRate), 'tokens-per-second'),
      card('TTFT (last)', formatMs(lastTtft), 'ttft'),
      card('TPOT (last)', formatMs(lastTpot), 'tpot'),
      card('tokens seen', s.totalTokens.toLocaleString('en-US'), 'total-tokens'),
      card('process memory', formatBytes(rss), 'rss'),
      card('GPU memory', gpu === null ? 'no GPU in use' : formatBytes(gpu), 'gpu')
    );
    nodes.push(cards);

    nodes.push(this.section('Tokens per second', chart([
      { points: s.tokensPerSecond, className: 'jp-InferLab-lineRate' }
    ])));
    nodes.push(this.section('TTFT (orange) and TPOT (blue) per request', chart([
      { points: s.ttft, className: 'jp-InferLab-lineTtft' },
      { points: s.tpot, className: 'jp-InferLab-lineTpot' }
    ])));
    nodes.push(this.section('Requests: queued → prefill → decode → done', this.timeline()));
    nodes.push(this.section('KV cache (serving engine)', this.kvView()));
    nodes.push(this.section('Speculative decoding', this.specView()));
    nodes.push(this.section('Process memory', chart([
      { points: s.rss, className: 'jp-InferLab-lineMem' },
      { points: s.gpu, className: 'jp-InferLab-lineGpu' }
    ])));
    this.node.replaceChildren(...nodes);
  }

  private section(title: string, body: Element): HTMLElement {
    const node = div('jp-InferLab-section');
    node.appendChild(div('jp-InferLab-sectionTitle', title));
    node.appendChild(body);
    return node;
  }

  private timeline(): HTMLElement {
    const reqs = [...this.store.requests.values()].slice(-16);
    const box = div('jp-InferLab-timeline');
    if (!reqs.length) {
      box.textContent = 'no requests yet';
      return box;
    }
    const now = Date.now() / 1000;
    const all = reqs.map(r => segments(r, now));
    const starts = all.flat().map(x => x.start);
    const ends = all.flat().map(x => x.end);
    const t0 = Math.min(...starts);
    const span = Math.max(1e-3, Math.max(...ends) - t0);
    reqs.forEach((r, i) => {
      const row = div('jp-InferLab-tlRow');
      row.appendChild(div('jp-InferLab-tlLabel', r.id));
      const track = div('jp-InferLab-tlTrack');
      for (const seg of all[i]) {
        const bar = div(`jp-InferLab-tlSeg jp-mod-${seg.phase}`);
        bar.style.left = `${((seg.start - t0) / span) * 100}%`;
        bar.style.width = `${Math.max(0.5, ((seg.end - seg.start) / span) * 100)}%`;
        bar.title = `${seg.phase}: ${formatMs(seg.end - seg.start)}`;
        track.appendChild(bar);
      }
      row.appendChild(track);
      const done = r.phases.some(p => p.phase === 'done');
      row.appendChild(div('jp-InferLab-tlInfo', done ? `${r.tokens} tok` : 'running'));
      box.appendChild(row);
    });
    const legend = div('jp-InferLab-legend');
    for (const p of ['queued', 'prefill', 'decode']) {
      const key = div(`jp-InferLab-tlSeg jp-mod-${p} jp-InferLab-key`);
      legend.append(key, document.createTextNode(` ${p} `));
    }
    box.appendChild(legend);
    return box;
  }

  private kvView(): HTMLElement {
    const kv = this.store.kv;
    const box = div('jp-InferLab-kv');
    if (!kv) {
      box.textContent = 'no serving engine has run yet';
      return box;
    }
    const bar = div('jp-InferLab-bar');
    const fill = div('jp-InferLab-barFill');
    fill.style.width = `${kv.total ? (kv.used / kv.total) * 100 : 0}%`;
    bar.appendChild(fill);
    box.append(
      div('', `${kv.used} blocks used, ${kv.free} free of ${kv.total}; ` +
        `${kv.running} running, ${kv.waiting} waiting`),
      bar
    );
    return box;
  }

  private specView(): HTMLElement {
    const s = this.store;
    const box = div('jp-InferLab-spec');
    if (!s.spec) {
      box.textContent = 'no speculative decoding yet';
      return box;
    }
    box.textContent =
      `acceptance ${(100 * (s.acceptanceRate ?? 0)).toFixed(1)}% ` +
      `(${s.specTotals.accepted} of ${s.specTotals.proposed} draft tokens); ` +
      `last call: alpha ${s.spec.alpha.toFixed(2)}`;
    return box;
  }
}
