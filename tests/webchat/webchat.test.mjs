// The web chat as a person uses it, in Debian's headless Chromium driven by playwright-core:
// send messages, see the tool calls and the answers appear live, reload and see the history, and fail
// to read another browser's session. Saves a screenshot of the conversation.
//
// Usage: node webchat.test.mjs <gateway url> <screenshot.png>   (webchat_driver starts the stack)
// Environment: CHROMIUM (default /usr/bin/chromium); STORE_URL and STORE_TOKEN, the event store the
// gateway appends to (to write a run the offline provider never makes: thinking, then a failure).
import assert from 'node:assert/strict';
import { WAIT, run, say, step } from './harness.mjs';

const [gateway, screenshot] = process.argv.slice(2);
if (!gateway || !screenshot) {
  console.error('usage: node webchat.test.mjs <gateway url> <screenshot.png>');
  process.exit(2);
}

const texts = (page, selector) => page.$$eval(selector, (els) => els.map((e) => e.textContent));

// The text of a bubble without its time stamp.
const bubbleTexts = (page, selector) =>
  page.$$eval(selector, (els) => els.map((e) => e.firstChild && e.firstChild.nodeType === 3 ? e.firstChild.textContent : ''));

async function runsDone(page, n) {
  await page.waitForFunction(
    (count) => document.querySelectorAll('.run-status[data-state="done"]').length >= count, n, WAIT);
}

await run(async (browser) => {
  const alice = await browser.newContext({ viewport: { width: 1000, height: 1200 } });
  const page = await alice.newPage();
  const pageErrors = [];
  let dialogs = 0;
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') console.log(`  [page console] ${m.text()}`); });
  page.on('dialog', (d) => { dialogs += 1; d.dismiss(); });

  await step('the page loads and its event stream goes live', async () => {
    const res = await page.goto(gateway + '/');
    assert.equal(res.status(), 200);
    await page.waitForSelector('#status[data-state="live"]', WAIT);
    assert.equal(await page.title(), 'engram');
  });

  await step('a message shows the remember tool call with its result, then the answer', async () => {
    await say(page, 'remember that my favourite colour is blue');
    await page.waitForSelector('.msg-user[data-event-id]', WAIT);  // confirmed by the store
    const user = await bubbleTexts(page, '.msg-user');
    assert.deepEqual(user, ['remember that my favourite colour is blue']);
    const tool = await page.waitForSelector('.tool[data-tool="remember"][data-state="done"]', WAIT);
    assert.match(await (await tool.$('.tool-args')).textContent(), /favourite colour is blue/);
    assert.notEqual((await (await tool.$('.tool-result')).textContent()).trim(), '…');
    await page.waitForSelector('.msg-assistant', WAIT);
    await runsDone(page, 1);
    const answers = await bubbleTexts(page, '.msg-assistant');
    assert.equal(answers.length, 1);
    assert.match(answers[0], /blue/);
  });

  await step('a question is answered from memory through the recall tool', async () => {
    // The memory processor indexes the stored memory asynchronously; ask again if the first recall
    // came too early (the AI processor is deterministic, the indexing is not).
    for (let attempt = 1; ; attempt++) {
      await say(page, 'what is my favourite colour?');
      await runsDone(page, 1 + attempt);
      const answers = await bubbleTexts(page, '.msg-assistant');
      if (/blue/.test(answers[answers.length - 1])) break;
      assert.ok(attempt < 5, `the recall never found the memory: ${answers.join(' | ')}`);
      await page.waitForTimeout(1000);
    }
    const recall = await page.$$('.tool[data-tool="recall"][data-state="done"]');
    assert.ok(recall.length >= 1);
    assert.match(await (await recall[recall.length - 1].$('.tool-result')).textContent(), /blue/);
  });

  await step('thinking and a failed run appear live', async () => {
    // The offline provider neither thinks aloud nor fails: write such a run into the session through
    // the store's API, as the AI processor would, and watch the page show it.
    const store = process.env.STORE_URL;
    assert.ok(store, 'STORE_URL is not set');
    const { session_id: session } = await page.evaluate(async () => (await fetch('/chat/session')).json());
    const runId = '00000000-0000-4000-8000-00000000f41d';
    const meta = { source: 'webchat-test', session_id: session };
    const res = await fetch(`${store}/events`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${process.env.STORE_TOKEN}` },
      body: JSON.stringify({
        aggregate_id: session,
        events: [
          { type: 'AIProcessingStarted', data: { run_id: runId, trigger_event_id: '00000000-0000-4000-8000-000000000001', model: 'test', provider: 'test' }, metadata: meta },
          { type: 'ThinkingGenerated', data: { run_id: runId, text: 'The user wants <b>everything</b> at once.' }, metadata: meta },
          { type: 'AIProcessingFailed', data: { run_id: runId, reason: 'llm_unavailable', detail: 'the model answered 503 three times', retryable: true }, metadata: meta },
        ],
      }),
    });
    assert.equal(res.status, 201, await res.text());
    const run = await page.waitForSelector(`.run[data-run-id="${runId}"] .run-status[data-state="failed"]`, WAIT);
    assert.match(await run.textContent(), /failed/);
    const thinking = await page.textContent(`.run[data-run-id="${runId}"] .thinking`);
    assert.match(thinking, /The user wants <b>everything<\/b> at once\./);
    const failure = await page.textContent(`.run[data-run-id="${runId}"] .failure`);
    assert.match(failure, /llm_unavailable/);
    assert.match(failure, /503 three times/);
  });

  await step('markup in a message is shown as text, never run', async () => {
    const evil = '<img src=x onerror="alert(1)"> <b>not bold</b>';
    const before = (await page.$$('.run-status[data-state="done"]')).length;
    await say(page, evil);
    await runsDone(page, before + 1);
    const user = await bubbleTexts(page, '.msg-user');
    assert.equal(user[user.length - 1], evil);
    assert.equal(await page.$$eval('#log img, #log b', (els) => els.length), 0);
    assert.equal(dialogs, 0);
  });

  let history;
  await step('reloading the page shows the conversation so far', async () => {
    history = {
      user: await bubbleTexts(page, '.msg-user'),
      assistant: await bubbleTexts(page, '.msg-assistant'),
      tools: await page.$$eval('.tool', (els) => els.map((e) => `${e.dataset.tool}:${e.dataset.state}`)),
      thinking: await texts(page, '.thinking'),
      failures: await texts(page, '.failure'),
    };
    await page.reload();
    await page.waitForSelector('#status[data-state="live"]', WAIT);
    await page.waitForFunction(
      (n) => document.querySelectorAll('.msg-assistant').length >= n, history.assistant.length, WAIT);
    await runsDone(page, history.assistant.length);
    assert.deepEqual(await bubbleTexts(page, '.msg-user'), history.user);
    assert.deepEqual(await bubbleTexts(page, '.msg-assistant'), history.assistant);
    assert.deepEqual(await page.$$eval('.tool', (els) => els.map((e) => `${e.dataset.tool}:${e.dataset.state}`)), history.tools);
    assert.ok(history.tools.includes('remember:done') && history.tools.includes('recall:done'), history.tools.join(','));
    assert.deepEqual(await texts(page, '.thinking'), history.thinking);
    assert.deepEqual(await texts(page, '.failure'), history.failures);
    assert.equal(history.failures.length, 1);
  });

  await step('the screenshot is saved', async () => {
    // The whole conversation: grow the window to the page's height (the log scrolls inside it).
    const size = page.viewportSize();
    const height = await page.evaluate(() => {
      const s = document.getElementById('scroller');
      return document.body.scrollHeight - s.clientHeight + s.scrollHeight;
    });
    await page.setViewportSize({ width: size.width, height: Math.min(Math.max(height, size.height), 6000) });
    await page.screenshot({ path: screenshot });
    await page.setViewportSize(size);
  });

  await step('the session cookie is HttpOnly and SameSite=Lax: page scripts cannot read it', async () => {
    const [cookie] = (await alice.cookies()).filter((c) => c.name === 'engram_chat');
    assert.ok(cookie, 'no engram_chat cookie');
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, 'Lax');
    assert.equal(await page.evaluate(() => document.cookie), '');
  });

  await step("another browser gets its own session and cannot open the first one's stream", async () => {
    const bob = await browser.newContext({ viewport: { width: 1000, height: 800 } });
    const page2 = await bob.newPage();
    await page2.goto(gateway + '/');
    await page2.waitForSelector('#status[data-state="live"]', WAIT);
    await page2.waitForTimeout(1000);
    assert.equal((await page2.$$('.msg-user, .msg-assistant, .tool')).length, 0);
    assert.doesNotMatch(await page2.textContent('#log'), /favourite colour/);

    const [a] = (await alice.cookies()).filter((c) => c.name === 'engram_chat');
    const [b] = (await bob.cookies()).filter((c) => c.name === 'engram_chat');
    assert.notEqual(a.value, b.value);
    const aliceId = a.value.split('.')[0];
    const bobSig = b.value.slice(b.value.indexOf('.') + 1); // Bob's issue time and signature
    const flip = (s) => s.slice(0, -1) + (s.endsWith('0') ? '1' : '0');
    // Bob's browser tries Alice's session id with his own signature, and with a tampered one.
    for (const forged of [`${aliceId}.${bobSig}`, flip(a.value), aliceId]) {
      await bob.addCookies([{ name: 'engram_chat', value: forged, url: gateway }]);
      const got = await page2.evaluate(async () => {
        const r = await fetch('/chat/events');
        return { status: r.status, body: await r.text() };
      });
      assert.equal(got.status, 401, `forged cookie ${forged} got ${got.status}`);
      assert.doesNotMatch(got.body, /favourite colour/);
      const sent = await page2.evaluate(async () => {
        const r = await fetch('/chat/messages', {
          method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ id: 'x1', text: 'hi' }),
        });
        return r.status;
      });
      assert.equal(sent, 401);
    }
    // Naming Alice's session in the URL changes nothing: the stream is Bob's own (empty) one.
    await bob.addCookies([{ name: 'engram_chat', value: b.value, url: gateway }]);
    const named = await page2.evaluate(async (id) => {
      const ctl = new AbortController();
      const r = await fetch(`/chat/events?aggregate_id=session:web:${id}&session=${id}`, { signal: ctl.signal });
      const reader = r.body.getReader();
      let text = '';
      const stop = setTimeout(() => ctl.abort(), 1500);
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          text += new TextDecoder().decode(value);
        }
      } catch (_) { /* aborted */ }
      clearTimeout(stop);
      return { status: r.status, text };
    }, aliceId);
    assert.equal(named.status, 200);
    assert.doesNotMatch(named.text, /favourite colour/);
    assert.doesNotMatch(named.text, /event: /);
    await bob.close();
  });

  await step('"fork from here" opens a fork: the history up to there, then the fork\'s own answer', async () => {
    const { session_id: origin } = await page.evaluate(async () => (await fetch('/chat/session')).json());
    const firstUser = (await bubbleTexts(page, '.msg-user'))[0];
    const firstAnswer = (await bubbleTexts(page, '.msg-assistant'))[0];
    page.removeAllListeners('dialog');
    page.once('dialog', (d) => d.accept('what is my favourite colour?'));
    await page.click('.msg-assistant >> nth=0 >> .fork-here');
    await page.waitForSelector('.forked', WAIT);  // the page reloaded into the fork
    await page.waitForSelector('#status[data-state="live"]', WAIT);
    const { session_id: fork } = await page.evaluate(async () => (await fetch('/chat/session')).json());
    assert.notEqual(fork, origin);
    assert.match(fork, /^session:web:/);
    await runsDone(page, 1);  // the fork's; the inherited run is cut at the fork position
    assert.ok(await page.$('.run-status[data-state="inherited"]'), 'the inherited run is shown as cut at the fork');
    assert.deepEqual(await bubbleTexts(page, '.msg-user'), [firstUser, 'what is my favourite colour?']);
    const answers = await bubbleTexts(page, '.msg-assistant');
    assert.equal(answers.length, 2, answers.join(' | '));
    assert.equal(answers[0], firstAnswer);
    assert.match(answers[1], /blue/);  // the fork's run, for the origin's user
    assert.ok(await page.$('.msg-user.inherited'), 'the inherited history is marked');
    assert.equal(await page.$$eval('.inherited .fork-here', (els) => els.length), 0, 'inherited messages are forked from their own page');
    assert.doesNotMatch(await page.textContent('#log'), /not bold/);  // what came after the fork point
    // A reload of the fork shows the same.
    await page.reload();
    await page.waitForSelector('#status[data-state="live"]', WAIT);
    await runsDone(page, 1);
    await page.waitForFunction((n) => document.querySelectorAll('.msg-assistant').length >= n, answers.length, WAIT);
    assert.deepEqual(await bubbleTexts(page, '.msg-assistant'), answers);
  });

  await step('the page raised no script errors', async () => {
    assert.deepEqual(pageErrors, []);
  });
  await alice.close();
});
