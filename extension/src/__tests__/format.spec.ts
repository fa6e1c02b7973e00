import {
  formatBytes,
  formatMinutes,
  formatMs,
  formatRate,
  hardwareLabel,
  overallProgress,
  parseLabIntro,
  progressFraction,
  progressLabel,
  shortDevice
} from '../format';
import { routeUrl } from '../api';

describe('formatting', () => {
  it('formats bytes in binary units', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(3 * 2 ** 30)).toBe('3.0 GiB');
    expect(formatBytes(200 * 2 ** 20)).toBe('200 MiB');
    expect(formatBytes(null)).toBe('–');
  });

  it('formats seconds as milliseconds and rates with few digits', () => {
    expect(formatMs(0.0123)).toBe('12.3 ms');
    expect(formatMs(0.25)).toBe('250 ms');
    expect(formatMs(null)).toBe('–');
    expect(formatRate(437.33)).toBe('437');
    expect(formatRate(12.345)).toBe('12.3');
    expect(formatRate(1039.4)).toBe('1,039');
    expect(formatRate(undefined)).toBe('–');
    expect(formatMinutes(45)).toBe('about 45 min');
    expect(formatMinutes(null)).toBe('');
  });

  it('shortens device names and builds the status text', () => {
    expect(shortDevice('Intel(R) Xeon(R) Processor @ 2.10GHz')).toBe('Intel Xeon @ 2.10GHz');
    expect(shortDevice('Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz')).toBe('Intel Core i7-8650U');
    expect(
      hardwareLabel({ device: 'AMD EPYC', memory: { used: 2 ** 30, total: 8 * 2 ** 30 } })
    ).toBe('AMD EPYC · 1.0 GiB / 8.0 GiB');
    expect(
      hardwareLabel({
        device: 'NVIDIA A10G',
        memory: { used: 1, total: 2 },
        gpus: [{ memory_used: 2 ** 30, memory_total: 24 * 2 ** 30 }]
      })
    ).toBe('NVIDIA A10G · 1.0 GiB / 24.0 GiB');
  });
});

describe('progress math', () => {
  it('is a fraction in [0, 1] and never NaN', () => {
    expect(progressFraction({ passed: 1, total: 3 })).toBeCloseTo(1 / 3);
    expect(progressFraction({ passed: 0, total: 0 })).toBe(0);
    expect(progressFraction({ passed: 5, total: 3 })).toBe(1);
  });

  it('labels and sums', () => {
    expect(progressLabel({ passed: 2, total: 3 })).toBe('2 / 3 exercises');
    expect(progressLabel({ passed: 1, total: 1 })).toBe('1 / 1 exercise');
    expect(progressLabel({ passed: 0, total: 0 })).toBe('no exercises');
    const labs = [{ progress: { passed: 3, total: 3 } }, { progress: { passed: 1, total: 2 } }];
    expect(overallProgress(labs)).toEqual({ passed: 4, total: 5 });
  });
});

describe('lab intro parsing (same format as the server parser)', () => {
  const md = [
    '# Lab 01 · The KV cache',
    '',
    '**What you will learn**',
    '',
    '1. Why decoding without a cache costs more.',
    '2. Measure time per token.',
    '',
    '**Time:** about 40 minutes. **Hardware:** any CPU.',
    '3. not an objective'
  ].join('\n');

  it('reads the title, objectives and time', () => {
    expect(parseLabIntro(md)).toEqual({
      number: '01',
      title: 'The KV cache',
      objectives: ['Why decoding without a cache costs more.', 'Measure time per token.'],
      minutes: 40
    });
  });

  it('returns empty fields for anything else', () => {
    expect(parseLabIntro('hello')).toEqual({
      number: null,
      title: null,
      objectives: [],
      minutes: null
    });
  });
});

describe('routes', () => {
  it('join the base URL, so a JupyterHub prefix is kept', () => {
    expect(routeUrl('http://h/user/alice/', 'labs')).toBe('http://h/user/alice/infer-lab/labs');
    expect(routeUrl('/', 'hardware')).toBe('/infer-lab/hardware');
  });
});
