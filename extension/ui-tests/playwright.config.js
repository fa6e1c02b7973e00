/**
 * Galata (Playwright) against the system Chromium: Playwright's own browser download is
 * impossible offline, so PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 at install and
 * executablePath here. Video and trace are off (they would need an ffmpeg download).
 */
const baseConfig = require('@jupyterlab/galata/lib/playwright-config');

// Galata's own helpers (its per-test folder, session cleanup) call /api/... from the
// host root, so the browser tests run at the root base URL; the routes under a
// JupyterHub prefix are tested by extension/tests (pytest, /user/alice/).
const BASE = process.env.GALATA_BASE_URL || '/';
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

module.exports = {
  ...baseConfig,
  reporter: [['list']],
  retries: 0,
  workers: 1,
  timeout: 180000,
  use: {
    ...baseConfig.use,
    baseURL: `http://localhost:8888${BASE.replace(/\/$/, '')}`,
    trace: 'off',
    video: 'off',
    screenshot: 'off',
    viewport: { width: 1280, height: 800 },
    launchOptions: {
      executablePath: CHROMIUM,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-dev-shm-usage',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync'
      ]
    }
  },
  webServer: {
    command: 'jlpm start',
    url: `http://localhost:8888${BASE}lab`,
    timeout: 120000,
    reuseExistingServer: false
  }
};
