/**
 * What the inference monitor shows, aggregated from the kernel's telemetry messages.
 *
 * The kernel (infer_lab/telemetry.py) sends at most one message per 250 ms, each a
 * batch of events. This store turns them into the monitor's series and tables; it is
 * plain TypeScript (no JupyterLab imports), so jest drives it with hand-made messages.
 */

export const TARGET = 'infer_lab.telemetry';

export type Phase = 'queued' | 'prefill' | 'decode' | 'done';

export interface ITelemetryEvent {
  type: string;
  t: number;
  id?: string;
  [key: string]: any;
}

export interface ITelemetryMessage {
  events: ITelemetryEvent[];
  memory?: { rss: number | null; gpu: number | null };
  t: number;
}

export interface IPoint {
  t: number;
  v: number;
}

export interface IRequestTimeline {
  id: string;
  source: string;
  phases: { phase: Phase; t: number }[];
  tokens: number;
  ttft: number | null;
  tpot: number | null;
  final?: boolean; // the latency event gave the final token count
}

export interface IKVState {
  used: number;
  free: number;
  total: number;
  running: number;
  waiting: number;
}

export interface ISpecState {
  proposed: number;
  accepted: number;
  alpha: number;
  acceptance_rate: number;
}

/** Keep a series to its last `max` points. */
function push(series: IPoint[], point: IPoint, max: number): void {
  series.push(point);
  if (series.length > max) {
    series.splice(0, series.length - max);
  }
}

/**
 * Tokens/s of one message: each request's tokens over the seconds of work they took,
 * summed over the requests that ran in it (concurrent requests add up).
 */
export function messageRate(events: ITelemetryEvent[]): number | null {
  let rate = 0;
  let seen = false;
  for (const e of events) {
    if (e.type === 'tokens' && e.n > 0 && e.dt > 0) {
      rate += e.n / e.dt;
      seen = true;
    }
  }
  return seen ? rate : null;
}

export class TelemetryStore {
  constructor(
    readonly maxPoints = 240,
    readonly maxRequests = 40
  ) {}

  tokensPerSecond: IPoint[] = [];
  ttft: IPoint[] = [];
  tpot: IPoint[] = [];
  rss: IPoint[] = [];
  gpu: IPoint[] = [];
  requests = new Map<string, IRequestTimeline>();
  kv: IKVState | null = null;
  spec: ISpecState | null = null;
  specTotals = { proposed: 0, accepted: 0 };
  totalTokens = 0;
  messages = 0;

  /** The latest tokens/s (kept after decoding stops, so the number stays readable). */
  get lastRate(): number | null {
    const last = this.tokensPerSecond[this.tokensPerSecond.length - 1];
    return last ? last.v : null;
  }

  /** Apply one message from a kernel, then tell the listeners. */
  ingest(msg: ITelemetryMessage): void {
    if (!msg || !Array.isArray(msg.events)) {
      return;
    }
    this.messages++;
    const rate = messageRate(msg.events);
    if (rate !== null) {
      push(this.tokensPerSecond, { t: msg.t, v: rate }, this.maxPoints);
    }
    for (const e of msg.events) {
      this.apply(e);
    }
    if (msg.memory && msg.memory.rss !== null && msg.memory.rss !== undefined) {
      push(this.rss, { t: msg.t, v: msg.memory.rss }, this.maxPoints);
    }
    if (msg.memory && msg.memory.gpu !== null && msg.memory.gpu !== undefined) {
      push(this.gpu, { t: msg.t, v: msg.memory.gpu }, this.maxPoints);
    }
    this.emit();
  }

  private request(id: string, source = ''): IRequestTimeline {
    let r = this.requests.get(id);
    if (!r) {
      r = { id, source, phases: [], tokens: 0, ttft: null, tpot: null };
      this.requests.set(id, r);
      while (this.requests.size > this.maxRequests) {
        // Maps iterate in insertion order: drop the oldest request.
        this.requests.delete(this.requests.keys().next().value as string);
      }
    }
    if (source && !r.source) {
      r.source = source;
    }
    return r;
  }

  private apply(e: ITelemetryEvent): void {
    switch (e.type) {
      case 'phase': {
        const r = this.request(e.id as string, e.source);
        const last = r.phases[r.phases.length - 1];
        if (!last || last.phase !== e.phase) {
          r.phases.push({ phase: e.phase, t: e.t });
        }
        break;
      }
      case 'tokens':
        this.totalTokens += e.n;
        if (this.requests.has(e.id as string)) {
          const r = this.request(e.id as string);
          if (!r.final) {
            r.tokens += e.n; // a batch may carry the latency before its last tokens
          }
        }
        break;
      case 'latency': {
        const r = this.request(e.id as string);
        r.ttft = e.ttft ?? null;
        r.tpot = e.tpot ?? null;
        if (typeof e.tokens === 'number') {
          r.tokens = e.tokens; // the final count (engine requests send no own tokens events)
          r.final = true;
        }
        if (e.ttft !== null && e.ttft !== undefined) {
          push(this.ttft, { t: e.t, v: e.ttft }, this.maxPoints);
        }
        if (e.tpot !== null && e.tpot !== undefined) {
          push(this.tpot, { t: e.t, v: e.tpot }, this.maxPoints);
        }
        break;
      }
      case 'kv':
        this.kv = {
          used: e.used,
          free: e.free,
          total: e.total,
          running: e.running,
          waiting: e.waiting
        };
        break;
      case 'spec':
        this.spec = {
          proposed: e.proposed,
          accepted: e.accepted,
          alpha: e.alpha,
          acceptance_rate: e.acceptance_rate
        };
        this.specTotals.proposed += e.proposed;
        this.specTotals.accepted += e.accepted;
        break;
    }
  }

  /** Accepted over proposed draft tokens, over every speculative call seen. */
  get acceptanceRate(): number | null {
    const { proposed, accepted } = this.specTotals;
    return proposed ? accepted / proposed : null;
  }

  clear(): void {
    this.tokensPerSecond = [];
    this.ttft = [];
    this.tpot = [];
    this.rss = [];
    this.gpu = [];
    this.requests.clear();
    this.kv = null;
    this.spec = null;
    this.specTotals = { proposed: 0, accepted: 0 };
    this.totalTokens = 0;
    this.messages = 0;
    this.emit();
  }

  // -- listeners (kept plain so the store has no JupyterLab dependency) -------------
  private listeners = new Set<() => void>();

  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(): void {
    this.listeners.forEach(fn => fn());
  }
}

export interface ISegment {
  phase: Phase;
  start: number;
  end: number;
}

/**
 * A request's phases as segments [start, end) of a timeline; a request that is not
 * done yet runs to `now`. `done` itself has no length and is not a segment.
 */
export function segments(r: IRequestTimeline, now: number): ISegment[] {
  const out: ISegment[] = [];
  r.phases.forEach((p, i) => {
    if (p.phase === 'done') {
      return;
    }
    const next = r.phases[i + 1];
    out.push({ phase: p.phase, start: p.t, end: next ? next.t : now });
  });
  return out;
}

/** An SVG path through the points, scaled into width x height (y grows upward). */
export function sparkPath(points: IPoint[], width: number, height: number): string {
  if (!points.length) {
    return '';
  }
  const t0 = points[0].t;
  const t1 = points[points.length - 1].t;
  const vmax = Math.max(...points.map(p => p.v)) || 1;
  const x = (t: number) => (t1 > t0 ? ((t - t0) / (t1 - t0)) * width : width / 2);
  const y = (v: number) => height - (v / vmax) * height;
  return points
    .map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`)
    .join(' ');
}
