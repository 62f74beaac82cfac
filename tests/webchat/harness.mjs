// What the web chat's browser tests share: Debian's headless Chromium through playwright-core, named
// steps that print ok/FAIL with their time, and typing a message into the page.
import { chromium } from 'playwright-core';

export const WAIT = { timeout: 30000 };

const counts = { passed: 0, failed: 0 };

export async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    counts.passed += 1;
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (err) {
    counts.failed += 1;
    console.log(`FAIL ${name}: ${err && err.stack ? err.stack : err}`);
    throw err;
  }
}

export async function say(page, text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
}

// Launches the browser, runs `body(browser)` (a failed step ends it), closes the browser and exits
// with the outcome.
export async function run(body) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // Playwright gives every launch a fresh temporary profile (user-data-dir).
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  let exitCode = 0;
  try {
    await body(browser);
  } catch (err) {
    exitCode = 1;
  } finally {
    await browser.close();
  }
  console.log(`${counts.passed} passed, ${counts.failed} failed`);
  process.exit(exitCode || (counts.failed ? 1 : 0));
}
