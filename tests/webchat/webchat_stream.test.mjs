// The web chat with a model that streams, in Debian's headless Chromium driven by playwright-core:
// the tool call takes shape on its card and the answer is written before the browser's eyes, then the
// logged events replace the drafts; a reload mid-answer picks the answer up where it is.
//
// Usage: node webchat_stream.test.mjs <gateway url> <screenshot.png>   (webchat_driver ... stream)
// Environment: CHROMIUM (default /usr/bin/chromium); STREAMED_ANSWER, the final answer the fake
// model streams.
import assert from 'node:assert/strict';
import { WAIT, run, say, step } from './harness.mjs';

const [gateway, screenshot] = process.argv.slice(2);
const answer = process.env.STREAMED_ANSWER || '';
if (!gateway || !screenshot || !answer) {
  console.error('usage: STREAMED_ANSWER=... node webchat_stream.test.mjs <gateway url> <screenshot.png>');
  process.exit(2);
}

// What `selector` shows (its text) every 40 ms until `done` matches, each change once.
async function watch(page, selector, done, onChange = async () => {}) {
  const seen = [];
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    const t = await page.$$eval(selector, (els) => (els.length ? els[els.length - 1].textContent : null));
    if (t !== null && (seen.length === 0 || seen[seen.length - 1] !== t)) {
      seen.push(t);
      await onChange(t);
    }
    if (await page.$(done)) return seen;
    await page.waitForTimeout(40);
  }
  throw new Error(`${done} did not appear; saw ${JSON.stringify(seen)}`);
}

const finalAnswers = (page) =>
  page.$$eval('.msg-assistant:not(.msg-draft)', (els) => els.map((e) => e.firstChild ? e.firstChild.textContent : ''));

await run(async (browser) => {
  const ctx = await browser.newContext({ viewport: { width: 1000, height: 1200 } });
  const page = await ctx.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') console.log(`  [page console] ${m.text()}`); });

  await step('the page loads and its event stream goes live', async () => {
    const res = await page.goto(gateway + '/');
    assert.equal(res.status(), 200);
    await page.waitForSelector('#status[data-state="live"]', WAIT);
  });

  const first = 'remember my favourite tea is jasmine';
  await step('the remember call takes shape on a draft card before it is logged', async () => {
    await say(page, first);
    const args = await watch(page, '.tool-draft[data-tool="remember"] .tool-args', '.tool[data-tool="remember"]:not(.tool-draft)');
    const full = JSON.stringify({ text: first });
    const partial = args.filter((t) => t.length > 0 && t.length < full.length);
    assert.ok(partial.length >= 2, `the arguments grew in pieces: ${JSON.stringify(args)}`);
    for (const t of args) assert.ok(full.startsWith(t), `${JSON.stringify(t)} is a prefix of ${full}`);
    // The logged card replaced the draft.
    await page.waitForSelector('.tool[data-tool="remember"][data-state="done"]', WAIT);
    assert.equal(await page.$$eval('.tool-draft', (els) => els.length), 0);
  });

  await step('the MCP tool called beside it has its card, with the MCP server\'s answer', async () => {
    const card = '.tool[data-tool="everything__echo"][data-state="done"]';
    await page.waitForSelector(card, WAIT);
    const result = await page.$eval(card + ' .tool-result', (e) => e.textContent);
    assert.ok(result.includes(`Echo: noted: ${first}`), `the echo result: ${result}`);
  });

  await step('the answer is written piece by piece, then the logged answer replaces the draft', async () => {
    let shot = false;
    const texts = await watch(page, '.msg-draft', '.msg-assistant:not(.msg-draft)', async (t) => {
      if (shot || t.length < 60) return;
      shot = true;  // the answer half written, for whoever looks at the artifacts
      await page.screenshot({ path: screenshot.replace(/\.png$/, '') + '-writing.png', fullPage: true });
    });
    const partial = texts.filter((t) => t.length > 0 && t.length < answer.length);
    assert.ok(partial.length >= 5, `the answer grew in pieces: ${partial.length} states`);
    for (let i = 1; i < partial.length; i++) assert.ok(partial[i].length > partial[i - 1].length, 'it only grows');
    for (const t of partial) assert.ok(answer.startsWith(t), `${JSON.stringify(t)} is a prefix of the answer`);
    assert.deepEqual(await finalAnswers(page), [answer]);
    await page.waitForSelector('.run-status[data-state="done"]', WAIT);
    assert.equal(await page.$$eval('.draft', (els) => els.length), 0);
  });

  await step('a reload mid-answer shows the log and continues the answer live', async () => {
    await say(page, 'remember my favourite colour is green');
    await page.waitForSelector('.tool[data-tool="remember"][data-state="done"] >> nth=1', WAIT);
    await page.waitForFunction((n) => {
      const d = document.querySelector('.msg-draft');
      return d && d.textContent.length >= n;
    }, 30, WAIT);
    await page.reload();
    await page.waitForSelector('#status[data-state="live"]', WAIT);
    // The history is there (both remember calls), and the answer being written is too, mid-way.
    const texts = await watch(page, '.msg-draft', '.msg-assistant:not(.msg-draft) >> nth=1');
    assert.ok(texts.length >= 2, `the answer went on after the reload: ${JSON.stringify(texts)}`);
    assert.ok(texts[0].length >= 30, `the draft started from a snapshot: ${JSON.stringify(texts[0])}`);
    for (const t of texts) assert.ok(answer.startsWith(t), `${JSON.stringify(t)} is a prefix of the answer`);
    assert.deepEqual(await finalAnswers(page), [answer, answer]);
    // In the order they happened: the draft waited for its run instead of landing above the history.
    const order = await page.$$eval('#log > li', (els) => els.map((e) => (e.classList.contains('run') ? 'run' : e.classList.contains('msg-user') ? 'user' : e.className)));
    assert.deepEqual(order, ['user', 'run', 'user', 'run']);
    assert.equal(await page.$$eval('.tool[data-tool="remember"]:not(.tool-draft)', (els) => els.length), 2);
    await page.waitForFunction(() => document.querySelectorAll('.run-status[data-state="done"]').length === 2, null, WAIT);
    assert.equal(await page.$$eval('.draft', (els) => els.length), 0);
    await page.screenshot({ path: screenshot, fullPage: true });
  });

  await step('the page raised no script errors', async () => {
    assert.deepEqual(pageErrors, []);
  });
  await ctx.close();
});
