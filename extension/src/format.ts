/**
 * Pure helpers shared by the panels: numbers to text, progress math, lab parsing.
 *
 * They take plain data and return plain data, so jest tests them without a browser
 * or a running JupyterLab.
 */

/** Bytes as a short human string: 1536 -> "1.5 KiB". */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !isFinite(bytes)) {
    return '–';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Math.max(0, bytes);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

/** Seconds as milliseconds text: 0.0123 -> "12.3 ms"; null -> "–". */
export function formatMs(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) {
    return '–';
  }
  const ms = seconds * 1000;
  return `${ms >= 100 ? ms.toFixed(0) : ms.toFixed(1)} ms`;
}

/** Tokens per second: three significant figures, thousands separated. */
export function formatRate(rate: number | null | undefined): string {
  if (rate === null || rate === undefined || !isFinite(rate)) {
    return '–';
  }
  if (rate >= 1000) {
    return Math.round(rate).toLocaleString('en-US');
  }
  return rate >= 100 ? rate.toFixed(0) : rate.toFixed(1);
}

/** Minutes as "about 45 min" (or "" when unknown). */
export function formatMinutes(minutes: number | null | undefined): string {
  return minutes ? `about ${minutes} min` : '';
}

export interface IProgress {
  passed: number;
  total: number;
}

/** Fraction done in [0, 1]; a lab without exercises is 0, never NaN. */
export function progressFraction(p: IProgress): number {
  if (!p.total || p.total <= 0) {
    return 0;
  }
  return Math.min(1, Math.max(0, p.passed / p.total));
}

/** "2 / 3 exercises" (or "no exercises"). */
export function progressLabel(p: IProgress): string {
  if (!p.total) {
    return 'no exercises';
  }
  return `${p.passed} / ${p.total} exercise${p.total === 1 ? '' : 's'}`;
}

/** Passed and total over every lab: the navigator's header line. */
export function overallProgress(labs: { progress: IProgress }[]): IProgress {
  return labs.reduce(
    (acc, lab) => ({
      passed: acc.passed + lab.progress.passed,
      total: acc.total + lab.progress.total
    }),
    { passed: 0, total: 0 }
  );
}

/** "Intel Xeon · 3.1 / 7.8 GiB": the status bar's text. */
export function hardwareLabel(h: {
  device: string;
  memory: { used: number | null; total: number | null };
  gpus?: { memory_used: number | null; memory_total: number | null }[];
}): string {
  const gpu = h.gpus && h.gpus.length ? h.gpus[0] : null;
  const mem = gpu
    ? `${formatBytes(gpu.memory_used)} / ${formatBytes(gpu.memory_total)}`
    : `${formatBytes(h.memory.used)} / ${formatBytes(h.memory.total)}`;
  return `${shortDevice(h.device)} · ${mem}`;
}

/** Drop the marketing noise from a CPU or GPU name: "(R)", "(TM)", "CPU @ 2.1GHz". */
export function shortDevice(name: string): string {
  return name
    .replace(/\((R|TM|tm|r)\)/g, '')
    .replace(/\bCPU\b\s*@.*$/, '')
    .replace(/\s+Processor\b/, '')
    .replace(/\s+/g, ' ')
    .trim();
}

export interface ILabIntro {
  number: string | null;
  title: string | null;
  objectives: string[];
  minutes: number | null;
}

/**
 * A lab's first markdown cell -> title, objectives, minutes. The server does the same
 * in Python (infer_lab_ext/labs.py); this copy lets a notebook that is open but not yet
 * saved show its own header, and keeps both parsers to one tested format.
 */
export function parseLabIntro(markdown: string): ILabIntro {
  const title = /^#\s+Lab\s+(\d+)\s*[·:.\-–—]\s*(.+?)\s*$/m.exec(markdown);
  const time = /\*\*Time:\*\*\s*(?:about|~)?\s*(\d+)\s*min/i.exec(markdown);
  const objectives: string[] = [];
  const lines = markdown.split(/\r?\n/);
  const start = lines.findIndex(l => l.toLowerCase().includes('what you will learn'));
  if (start >= 0) {
    for (const line of lines.slice(start + 1)) {
      const m = /^\s*\d+\.\s+(.+?)\s*$/.exec(line);
      if (m) {
        objectives.push(m[1]);
      } else if (objectives.length && line.trim()) {
        break;
      }
    }
  }
  return {
    number: title ? title[1] : null,
    title: title ? title[2] : null,
    objectives,
    minutes: time ? parseInt(time[1], 10) : null
  };
}
