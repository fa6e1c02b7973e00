import {
  ITelemetryMessage,
  messageRate,
  segments,
  sparkPath,
  TelemetryStore
} from '../telemetry';

function msg(t: number, events: any[], rss = 1000): ITelemetryMessage {
  return { t, events, memory: { rss, gpu: null } };
}

describe('TelemetryStore', () => {
  it('turns token counts into tokens/s, summed over concurrent requests', () => {
    expect(messageRate([{ type: 'tokens', t: 0, id: 'a', n: 100, dt: 0.25 }])).toBe(400);
    expect(
      messageRate([
        { type: 'tokens', t: 0, id: 'a', n: 10, dt: 0.1 },
        { type: 'tokens', t: 0, id: 'b', n: 20, dt: 0.1 },
        { type: 'phase', t: 0, id: 'b', phase: 'done' }
      ])
    ).toBeCloseTo(300);
    expect(messageRate([{ type: 'tokens', t: 0, id: 'a', n: 0, dt: 0 }])).toBeNull();
  });

  it('follows a request from prefill to done, with its latency', () => {
    const s = new TelemetryStore();
    let changes = 0;
    s.onChange(() => changes++);
    s.ingest(
      msg(10.25, [
        { type: 'phase', t: 10.0, id: 'g0', source: 'generate', phase: 'prefill' },
        { type: 'phase', t: 10.02, id: 'g0', phase: 'decode' },
        { type: 'tokens', t: 10.25, id: 'g0', n: 50, dt: 0.25 }
      ])
    );
    expect(s.lastRate).toBe(200);
    s.ingest(
      msg(10.4, [
        { type: 'phase', t: 10.4, id: 'g0', phase: 'done' },
        { type: 'latency', t: 10.4, id: 'g0', ttft: 0.02, tpot: 0.005, tokens: 64 },
        { type: 'tokens', t: 10.4, id: 'g0', n: 14, dt: 0.07 }
      ])
    );
    const r = s.requests.get('g0')!;
    expect(r.phases.map(p => p.phase)).toEqual(['prefill', 'decode', 'done']);
    expect(r.tokens).toBe(64);
    expect(s.totalTokens).toBe(64);
    expect(s.ttft).toEqual([{ t: 10.4, v: 0.02 }]);
    expect(s.tpot[0].v).toBe(0.005);
    expect(s.rss.length).toBe(2);
    expect(changes).toBe(2);
    expect(segments(r, 11)).toEqual([
      { phase: 'prefill', start: 10.0, end: 10.02 },
      { phase: 'decode', start: 10.02, end: 10.4 }
    ]);
  });

  it('keeps the latest KV state and sums speculative acceptance', () => {
    const s = new TelemetryStore();
    s.ingest(
      msg(1, [
        { type: 'kv', t: 1, used: 3, free: 29, total: 32, running: 2, waiting: 1 },
        { type: 'kv', t: 1, used: 5, free: 27, total: 32, running: 2, waiting: 0 },
        { type: 'spec', t: 1, proposed: 10, accepted: 5, alpha: 0.5, acceptance_rate: 0.5 }
      ])
    );
    s.ingest(
      msg(2, [{ type: 'spec', t: 2, proposed: 10, accepted: 9, alpha: 0.9, acceptance_rate: 0.9 }])
    );
    expect(s.kv).toEqual({ used: 5, free: 27, total: 32, running: 2, waiting: 0 });
    expect(s.acceptanceRate).toBeCloseTo(0.7);
    expect(s.spec!.alpha).toBe(0.9);
  });

  it('bounds its memory: series and requests are capped', () => {
    const s = new TelemetryStore(10, 5);
    for (let i = 0; i < 100; i++) {
      s.ingest(
        msg(i, [
          { type: 'phase', t: i, id: `r${i}`, source: 'engine', phase: 'queued' },
          { type: 'tokens', t: i, id: `r${i}`, n: 1, dt: 0.01 }
        ])
      );
    }
    expect(s.tokensPerSecond.length).toBe(10);
    expect(s.tokensPerSecond[0].t).toBe(90);
    expect([...s.requests.keys()]).toEqual(['r95', 'r96', 'r97', 'r98', 'r99']);
    expect(s.totalTokens).toBe(100);
    s.ingest(msg(101, [{ type: 'latency', t: 101, id: 'r99', ttft: 0.1, tpot: null, tokens: 7 }]));
    expect(s.requests.get('r99')!.tokens).toBe(7); // engine requests: the final count
    expect(s.tpot.length).toBe(0);
    s.clear();
    expect(s.messages).toBe(0);
    expect(s.lastRate).toBeNull();
  });

  it('ignores malformed messages', () => {
    const s = new TelemetryStore();
    s.ingest({} as any);
    s.ingest(null as any);
    expect(s.messages).toBe(0);
  });
});

describe('sparkPath', () => {
  it('scales points into the box, highest value at the top', () => {
    const path = sparkPath(
      [
        { t: 0, v: 0 },
        { t: 1, v: 2 },
        { t: 2, v: 1 }
      ],
      100,
      50
    );
    expect(path).toBe('M0.0,50.0 L50.0,0.0 L100.0,25.0');
    expect(sparkPath([], 100, 50)).toBe('');
    expect(sparkPath([{ t: 5, v: 0 }], 100, 50)).toBe('M50.0,50.0');
  });
});
