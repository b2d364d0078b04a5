import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const SCREENSHOTS = fileURLToPath(new URL('../../docs/screenshots/', import.meta.url));
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** Builds console/dist unless it exists (CI runs the tests without `npm run build`). */
export function ensureConsoleBuilt(): void {
  if (existsSync(`${ROOT}console/dist/index.html`) && process.env.CONSOLE_REBUILD !== '1') return;
  execFileSync(
    process.execPath,
    [
      `${ROOT}node_modules/vite/bin/vite.js`,
      'build',
      '--config',
      'console/vite.config.ts',
      '--logLevel',
      'warn',
    ],
    {
      cwd: ROOT,
      stdio: 'inherit',
    },
  );
}

/** Debian's Chromium, headless, with nothing that reaches the network by itself. */
export function launch(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`No Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH).`);
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

export const LAPTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

export interface ConsolePage {
  page: Page;
  context: BrowserContext;
  /** Console errors and uncaught exceptions of the page so far. */
  errors: string[];
  close(): Promise<void>;
}

/**
 * Opens `url` in a fresh context (its own sessionStorage) and records console errors and page errors.
 * `allow` lists console messages that are expected (e.g. the 401 of a wrong token).
 */
export async function open(
  browser: Browser,
  url: string,
  opts: { viewport?: { width: number; height: number }; allow?: RegExp[]; init?: string } = {},
): Promise<ConsolePage> {
  const context = await browser.newContext({
    viewport: opts.viewport ?? LAPTOP,
    deviceScaleFactor: 1,
    colorScheme: 'light',
  });
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    if (opts.allow?.some((re) => re.test(text))) return;
    errors.push(text);
  });
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  // A script as text: a function would be serialised after tsx's transform, helpers and all.
  if (opts.init) await page.addInitScript({ content: opts.init });
  await page.goto(url);
  return { page, context, errors, close: () => context.close() };
}

/** Saves a screenshot of the viewport as docs/screenshots/<name>.png. */
export async function shot(page: Page, name: string): Promise<void> {
  mkdirSync(SCREENSHOTS, { recursive: true });
  // Let charts and live values settle, and keep animations out of the picture.
  await page.waitForTimeout(300);
  await page.screenshot({ path: `${SCREENSHOTS}${name}.png`, animations: 'disabled' });
}

/** Waits until the text of `selector` satisfies `ok` (live updates, no reload). */
export async function waitText(
  page: Page,
  selector: string,
  ok: (text: string) => boolean,
  ms = 8000,
): Promise<string> {
  const loc = page.locator(selector).first();
  const end = Date.now() + ms;
  let last = '';
  while (Date.now() < end) {
    if ((await loc.count()) > 0) {
      last = (await loc.textContent()) ?? '';
      if (ok(last)) return last;
    }
    await page.waitForTimeout(100);
  }
  throw new Error(`${selector}: text ${JSON.stringify(last)} did not match within ${ms} ms`);
}
