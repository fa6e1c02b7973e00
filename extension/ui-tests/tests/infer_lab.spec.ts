/**
 * The extension in a real JupyterLab and a real kernel: the navigator lists the labs and
 * opens one; a cell that generates tokens makes the monitor show a non-zero tokens/s.
 * Screenshots of both panels go to ui-tests/screenshots/ (the README's images).
 */
import { expect, test } from '@jupyterlab/galata';
import * as fs from 'fs';
import * as path from 'path';

const SHOTS = path.resolve(__dirname, '..', 'screenshots');
// Every notebook in the repository's labs/ folder: adding a lab needs no edit here.
const LABS = fs
  .readdirSync(path.resolve(__dirname, '..', '..', '..', 'labs'))
  .filter(f => /^\d\d_.*\.ipynb$/.test(f)).length;

test.use({ autoGoto: true });

test('the navigator lists every lab and opens one', async ({ page }) => {
  await page.click('li[data-id="infer-lab-navigator"]');
  const labs = page.locator('.jp-InferLab-lab');
  await expect(labs).toHaveCount(LABS);
  await expect(labs.first()).toContainText('Lab 00 · Welcome');
  await expect(labs.nth(1)).toContainText('Lab 01 · The KV cache');
  await expect(labs.nth(1)).toContainText('about 40 min');
  await expect(labs.nth(1)).toContainText('0 / 3 exercises');
  await expect(page.locator('.jp-InferLab-continue')).toContainText('Continue: Lab 00');
  await page.locator('#infer-lab-navigator').screenshot({ path: `${SHOTS}/navigator.png` });

  await labs.nth(1).locator('.jp-InferLab-labTitle').click();
  await expect(page.locator('.jp-mod-current[role="tab"]')).toContainText('01_kv_cache.ipynb', {
    timeout: 30000
  });
  await expect(page.locator('.jp-NotebookPanel .jp-MarkdownCell').first()).toContainText(
    'The KV cache'
  );
});

test('the monitor shows live tokens/s from a generating cell', async ({ page }) => {
  // The hardware status bar item, from the server route under the base URL.
  await expect(page.locator('.jp-InferLab-status')).not.toContainText('…', { timeout: 20000 });
  await expect(page.locator('.jp-InferLab-status')).toContainText('/');

  // Open the monitor first (it subscribes), then the notebook beside it.
  await page.evaluate(() =>
    (window as any).jupyterapp.commands.execute('infer-lab:open-monitor')
  );
  await expect(page.locator('.jp-InferLab-monitor')).toBeVisible();
  await expect(page.locator('.jp-InferLab-monitor')).toContainText('Waiting for a kernel');
  await page.notebook.createNew('telemetry.ipynb');

  // Like every lab: a setup cell first. The kernel offers its comm when the cell calls
  // infer_lab.telemetry.connect() (importing infer_lab does nothing by itself) and reads
  // the monitor's "subscribe" between cells, so the next cell is live.
  await page.notebook.setCell(
    0,
    'code',
    [
      'import infer_lab',
      'infer_lab.telemetry.connect()',
      'from infer_lab.serving import Engine, EngineConfig',
      'from infer_lab.speculative import speculative_decode',
      'model, tok = infer_lab.load("code-s", device="cpu")',
      'target, _ = infer_lab.load("code-m", device="cpu")'
    ].join('\n')
  );
  await page.notebook.addCell(
    'code',
    [
      'out = infer_lab.generate(model, [tok.encode("def read_config(path):")], 128)',
      'spec, stats = speculative_decode(target, model, tok.encode("import os\\n"), 48, k=3)',
      'engine = Engine(model, EngineConfig(num_blocks=64, block_size=8, max_num_seqs=3))',
      'prompts = ["def main():", "class Point:", "import sys\\n", "for i in range(",',
      '           "with open(path) as f:", "x = [1, 2,"]',
      'outs = engine.generate([tok.encode(p) for p in prompts], 32)',
      'print(len(out[0]), len(spec), sum(map(len, outs)))'
    ].join('\n')
  );
  await page.notebook.runCell(0);
  await page.notebook.runCell(1);
  await expect(page.locator('.jp-OutputArea-output').last()).toContainText('128 48 192', {
    timeout: 120000
  });

  const rate = page.locator('[data-testid="tokens-per-second"]');
  await expect(rate).not.toHaveText('–', { timeout: 30000 });
  const value = parseFloat((await rate.innerText()).replace(/,/g, ''));
  expect(value).toBeGreaterThan(0);
  await expect(page.locator('.jp-InferLab-tlRow')).not.toHaveCount(0);
  await expect(page.locator('.jp-InferLab-kv')).toContainText('blocks used');
  await expect(page.locator('.jp-InferLab-spec')).toContainText('acceptance');
  console.log(`monitor: ${value} tokens/s`);
  await page.evaluate(() =>
    (window as any).jupyterapp.commands.execute('infer-lab:open-monitor')
  );
  await expect(page.locator('.jp-InferLab-monitor')).toBeVisible();
  await page.locator('.jp-InferLab-monitor').screenshot({ path: `${SHOTS}/monitor.png` });
});
