// The web chat: sends messages with POST /chat/messages and renders the session's events from
// GET /chat/events (Server-Sent Events; a fresh connection replays the whole conversation, which is
// what makes a reload show the history). A fork's session first shows what it inherits from its
// origin (GET /chat/history); "fork from here" on a message branches the conversation there (POST
// /chat/fork) and reloads into the fork. GET /chat/deltas adds the answer being written: the pieces
// of each model answer as they stream in, shown as a draft that the logged event replaces (a
// snapshot first, so a reload mid-answer continues where the answer is). Event data is only ever
// inserted as text (textContent).
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const log = $('log');
  const scroller = $('scroller');
  const form = $('composer');
  const input = $('input');
  const sendButton = $('send');
  const status = $('status');
  const notice = $('notice');
  const empty = $('empty');

  const TYPES = [
    'MessageReceived', 'TriggerReceived', 'AIProcessingStarted', 'ThinkingGenerated', 'ToolCalled',
    'ToolCompleted', 'MessageGenerated', 'AIProcessingCompleted', 'AIProcessingFailed', 'MemoryRecalled',
    'MemoryStored', 'SessionForked',
  ];

  const seen = new Set();        // event ids already rendered (a reconnect may overlap)
  const runs = new Map();        // run_id -> {el, status, tools}
  const tools = new Map();       // run_id + tool_call_id -> tool card
  const pending = new Map();     // client message id -> bubble shown before the store confirmed it
  const drafts = new Map();       // run_id/iteration -> the answer being written
  const settled = new Set();     // run_id/iteration whose logged event arrived: later pieces are late
  let lastPosition = '';
  let source = null;
  let retryDelay = 1000;

  // ---- helpers ------------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function time(ts) {
    const d = ts ? new Date(ts) : new Date();
    return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function pretty(value) {
    if (value === undefined || value === null) return '';
    if (typeof value === 'string') {
      try {
        const parsed = JSON.parse(value);
        if (parsed !== null && typeof parsed === 'object') return JSON.stringify(parsed, null, 2);
      } catch (_) { /* plain text */ }
      return value;
    }
    return JSON.stringify(value, null, 2);
  }

  // Tool arguments read best as "name: value" lines; anything nested stays JSON.
  function argumentsText(args) {
    if (args === null || typeof args !== 'object' || Array.isArray(args)) return pretty(args);
    const keys = Object.keys(args);
    if (keys.length === 0) return '(none)';
    return keys.map((k) => {
      const v = args[k];
      return `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`;
    }).join('\n');
  }

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 120;
  }

  function add(node, parent = log) {
    const stick = nearBottom();
    empty.hidden = true;
    parent.appendChild(node);
    if (stick) scroller.scrollTop = scroller.scrollHeight;
    return node;
  }

  function setStatus(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  function showNotice(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  // ---- rendering ----------------------------------------------------------------------------

  function userBubble(text, ts) {
    const li = el('li', 'msg msg-user', text);
    li.appendChild(el('span', 'meta', time(ts)));
    return li;
  }

  // A control that branches the conversation at this message's position.
  function forkable(node, e) {
    if (typeof e.position !== 'number') return node;
    node.dataset.position = String(e.position);
    const b = el('button', 'fork-here', 'fork from here');
    b.type = 'button';
    b.title = 'Start a new conversation that has this one up to here, and ask again or ask something else';
    b.addEventListener('click', () => fork(e.position));
    node.querySelector('.meta').appendChild(b);
    return node;
  }

  function run(runId) {
    const key = runId || '';
    let r = runs.get(key);
    if (!r) {
      const li = el('li', 'run');
      li.dataset.runId = key;
      const st = el('div', 'run-status', 'working…');
      st.dataset.state = 'running';
      li.appendChild(st);
      add(li);
      r = { el: li, status: st, tools: 0 };
      runs.set(key, r);
      // Pieces that came before the run's first logged event (a reload: the snapshot may beat the
      // replay of the history) wait for it, so the draft lands in its run, not above the history.
      for (const draft of drafts.values()) if (draft.runId === key && !draft.el.isConnected) li.insertBefore(draft.el, st);
    }
    return r;
  }

  function addToRun(runId, node) {
    const r = run(runId);
    const stick = nearBottom();
    // Logged events go before the run's drafts: the answer being written stays last.
    r.el.insertBefore(node, r.el.querySelector(':scope > .draft') || r.status);
    if (stick) scroller.scrollTop = scroller.scrollHeight;
    return node;
  }

  function render(type, e) {
    const d = e.data || {};
    if (d.run_id && (type === 'ThinkingGenerated' || type === 'ToolCalled' || type === 'MessageGenerated')) {
      settle(`${d.run_id}/${d.iteration}`);
    }
    if (type === 'AIProcessingCompleted' || type === 'AIProcessingFailed') {
      for (const key of Array.from(drafts.keys())) if (key.startsWith(`${d.run_id}/`)) settle(key);
    }
    switch (type) {
      case 'MessageReceived':
      case 'TriggerReceived': {
        const text = type === 'MessageReceived' ? d.text : d.message;
        const mine = d.message_id && pending.get(d.message_id);
        if (mine) {
          pending.delete(d.message_id);
          mine.dataset.state = 'sent';
          mine.dataset.eventId = e.id;
          return;
        }
        if (type === 'TriggerReceived' && d.reminder_id) {
          // A reminder that fell due: the assistant was triggered, the user said nothing.
          const li = el('li', 'reminder', `⏰ reminder: ${String(text || '').replace(/^Reminder: /, '')}`);
          li.dataset.eventId = e.id;
          add(li);
          return;
        }
        const li = forkable(userBubble(text, e.timestamp), e);
        li.dataset.eventId = e.id;
        if (d.message_id) li.dataset.messageId = d.message_id;
        add(li);
        return;
      }
      case 'SessionForked': {
        add(el('li', 'forked', `forked here from an earlier conversation${d.model ? ` · model ${d.model}` : ''}`));
        if (d.prompt) {
          const li = forkable(userBubble(d.prompt, e.timestamp), e);
          li.dataset.eventId = e.id;
          add(li);
        }
        return;
      }
      case 'AIProcessingStarted':
        run(d.run_id).status.textContent = 'thinking…';
        return;
      case 'ThinkingGenerated': {
        const div = el('div', 'thinking');
        div.appendChild(el('span', 'label', 'Thinking'));
        div.appendChild(document.createTextNode(d.text || ''));
        addToRun(d.run_id, div);
        return;
      }
      case 'ToolCalled': {
        const card = el('div', 'tool');
        card.dataset.tool = d.tool || '';
        card.dataset.toolCallId = d.tool_call_id || '';
        card.dataset.state = 'running';
        const head = el('div', 'tool-head');
        head.appendChild(el('span', 'tool-icon', '⚙'));
        head.appendChild(el('span', 'tool-name', d.tool));
        const st = el('span', 'tool-state', 'running…');
        head.appendChild(st);
        card.appendChild(head);
        const dl = el('dl');
        dl.appendChild(el('dt', '', 'arguments'));
        const args = el('dd');
        args.appendChild(el('pre', 'tool-args', argumentsText(d.arguments)));
        dl.appendChild(args);
        dl.appendChild(el('dt', 'tool-result-label', 'result'));
        const result = el('dd');
        result.appendChild(el('pre', 'tool-result', '…'));
        dl.appendChild(result);
        card.appendChild(dl);
        tools.set(`${d.run_id}/${d.tool_call_id}`, card);
        run(d.run_id).tools += 1;
        run(d.run_id).status.textContent = `running ${d.tool}…`;
        addToRun(d.run_id, card);
        return;
      }
      case 'ToolCompleted': {
        const card = tools.get(`${d.run_id}/${d.tool_call_id}`);
        if (!card) return;
        card.dataset.state = d.is_error ? 'error' : 'done';
        card.querySelector('.tool-result').textContent = pretty(d.result);
        const ms = typeof d.duration_ms === 'number' ? ` · ${d.duration_ms} ms` : '';
        card.querySelector('.tool-state').textContent = (d.is_error ? 'failed' : 'done') + ms;
        return;
      }
      case 'MessageGenerated': {
        const li = el('div', 'msg msg-assistant', d.text);
        li.dataset.eventId = e.id;
        li.appendChild(el('span', 'meta', time(e.timestamp)));
        addToRun(d.run_id, forkable(li, e));
        return;
      }
      case 'MemoryRecalled': {
        const n = Array.isArray(d.results) ? d.results.length : 0;
        addToRun(d.run_id, el('div', 'memory', `recalled ${n} ${n === 1 ? 'memory' : 'memories'} for “${d.query || ''}”`));
        return;
      }
      case 'MemoryStored':
        add(el('li', 'memory', `remembered: ${d.text || ''}`));
        return;
      case 'AIProcessingCompleted': {
        const r = run(d.run_id);
        r.status.dataset.state = 'done';
        const calls = r.tools === 1 ? '1 tool call' : `${r.tools} tool calls`;
        r.status.textContent = `done · ${calls}`;
        return;
      }
      case 'AIProcessingFailed': {
        const r = run(d.run_id);
        const box = el('div', 'failure');
        box.setAttribute('role', 'alert');
        box.appendChild(el('strong', '', `The assistant failed: ${d.reason || 'error'}`));
        box.appendChild(document.createTextNode(d.detail || ''));
        addToRun(d.run_id, box);
        r.status.dataset.state = 'failed';
        r.status.textContent = d.retryable ? 'failed (temporary problem: try again)' : 'failed';
        return;
      }
      default:
    }
  }

  function onEvent(type, msg) {
    let e;
    try {
      e = JSON.parse(msg.data);
    } catch (_) {
      return;
    }
    if (msg.lastEventId) lastPosition = msg.lastEventId;
    if (!e || !e.id || seen.has(e.id)) return;
    seen.add(e.id);
    render(type, e);
  }

  // ---- forks --------------------------------------------------------------------------------

  // What this session inherits when it is a fork, rendered before its own events.
  async function inherited() {
    try {
      const r = await fetch('/chat/history', { credentials: 'same-origin' });
      if (!r.ok) return;
      const j = await r.json();
      for (const e of j.inherited || []) {
        if (!e || !e.id || seen.has(e.id) || !TYPES.includes(e.type)) continue;
        seen.add(e.id);
        render(e.type, e);
      }
      if (!(j.inherited || []).length) return;
      log.querySelectorAll('li').forEach((n) => n.classList.add('inherited'));
      // A fork forks its own events; what it inherits is forked from its origin's page.
      log.querySelectorAll('li.inherited .fork-here').forEach((b) => b.remove());
      // A run the fork position cut short: what it did before is history, it is not working.
      log.querySelectorAll('.run-status[data-state="running"]').forEach((st) => {
        st.dataset.state = 'inherited';
        st.textContent = 'before the fork';
      });
    } catch (_) { /* the session's own events still come */ }
  }

  async function fork(position) {
    const text = window.prompt('Fork the conversation here. Ask something else, or leave it empty to ask the same again:', '');
    if (text === null) return;
    const body = { id: uuid(), at: position };
    if (text.trim()) body.prompt = text.trim();
    let r = null;
    try {
      r = await fetch('/chat/fork', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
    } catch (_) { /* below */ }
    if (r && r.ok) {
      // The answer moved this browser to the fork (its cookie): load it.
      window.location.reload();
      return;
    }
    let detail = r ? `HTTP ${r.status}` : 'the gateway cannot be reached';
    try {
      const j = r && (await r.json());
      if (j && j.detail) detail = j.detail;
    } catch (_) { /* keep the status */ }
    showNotice(`Not forked: ${detail}`);
  }

  // ---- the answer being written -------------------------------------------------------------

  function settle(key) {
    settled.add(key);
    const draft = drafts.get(key);
    if (draft) {
      draft.el.remove();
      drafts.delete(key);
    }
  }

  function draftOf(d) {
    const key = `${d.run_id}/${d.iteration}`;
    if (settled.has(key)) return null;
    let draft = drafts.get(key);
    if (!draft) {
      const box = el('div', 'draft');
      box.dataset.runId = d.run_id;
      box.dataset.iteration = String(d.iteration);
      box.dataset.state = 'writing';
      const text = el('div', 'msg msg-assistant msg-draft');
      text.hidden = true;
      box.appendChild(text);
      draft = { el: box, text, content: '', calls: new Map(), runId: d.run_id };
      drafts.set(key, draft);
      const r = runs.get(d.run_id);
      if (r) {
        const stick = nearBottom();
        r.el.insertBefore(box, r.status);
        r.status.textContent = 'writing…';
        if (stick) scroller.scrollTop = scroller.scrollHeight;
      }
    }
    return draft;
  }

  function clearDraft(draft) {
    draft.content = '';
    draft.text.textContent = '';
    draft.text.hidden = true;
    for (const c of draft.calls.values()) c.card.remove();
    draft.calls.clear();
  }

  function draftCall(draft, index) {
    let c = draft.calls.get(index);
    if (!c) {
      const card = el('div', 'tool tool-draft');
      card.dataset.state = 'forming';
      card.dataset.index = String(index);
      const head = el('div', 'tool-head');
      head.appendChild(el('span', 'tool-icon', '⚙'));
      const name = el('span', 'tool-name', '');
      head.appendChild(name);
      head.appendChild(el('span', 'tool-state', 'forming…'));
      card.appendChild(head);
      const args = el('pre', 'tool-args', '');
      card.appendChild(args);
      c = { card, name, args, text: '' };
      draft.calls.set(index, c);
      draft.el.appendChild(card);
    }
    return c;
  }

  function grow(draft, d, replace) {
    const stick = nearBottom();
    if (typeof d.content === 'string' && d.content) {
      draft.content = replace ? d.content : draft.content + d.content;
      draft.text.textContent = draft.content;
      draft.text.hidden = false;
    }
    if (Array.isArray(d.tool_calls)) {
      for (const t of d.tool_calls) {
        if (!t || typeof t.index !== 'number') continue;
        const c = draftCall(draft, t.index);
        if (t.name) {
          c.name.textContent = t.name;
          c.card.dataset.tool = t.name;
        }
        if (typeof t.arguments === 'string') {
          c.text = replace ? t.arguments : c.text + t.arguments;
          c.args.textContent = c.text;
        }
      }
    }
    if (d.truncated) draft.el.dataset.truncated = 'true';
    if (d.end) draft.el.dataset.state = 'ended';
    if (stick) scroller.scrollTop = scroller.scrollHeight;
  }

  function onDelta(kind, msg) {
    let d;
    try {
      d = JSON.parse(msg.data);
    } catch (_) {
      return;
    }
    if (!d || typeof d.run_id !== 'string' || typeof d.iteration !== 'number') return;
    const draft = draftOf(d);
    if (!draft) return;
    if (kind === 'snapshot' || d.restart) clearDraft(draft);
    grow(draft, d, kind === 'snapshot');
  }

  function connectDeltas() {
    // EventSource reconnects by itself (and then starts from a snapshot); a 204 (no live answers on
    // this gateway) ends it for good.
    const live = new EventSource('/chat/deltas');
    live.addEventListener('delta', (msg) => onDelta('delta', msg));
    live.addEventListener('snapshot', (msg) => onDelta('snapshot', msg));
  }

  // ---- the stream ---------------------------------------------------------------------------

  function connect() {
    // EventSource resumes with Last-Event-ID by itself; after a hard failure we reopen it with ?after=.
    const url = lastPosition ? `/chat/events?after=${encodeURIComponent(lastPosition)}` : '/chat/events';
    source = new EventSource(url);
    source.onopen = () => {
      retryDelay = 1000;
      setStatus('live', 'live');
    };
    source.onerror = async () => {
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        // EventSource gives up on an error status: a 401 means this session is gone for good (e.g.
        // the gateway restarted without WEBCHAT_SECRET); anything else is worth another try.
        let gone = false;
        try {
          gone = (await fetch('/chat/session', { credentials: 'same-origin' })).status === 401;
        } catch (_) { /* the gateway is unreachable: retry */ }
        if (gone) {
          setStatus('offline', 'session ended');
          showNotice('This chat session is no longer valid: reload the page to start a new one.');
          return;
        }
        setStatus('offline', 'offline, retrying…');
        setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 30000);
      } else {
        setStatus('reconnecting', 'reconnecting…');
      }
    };
    for (const type of TYPES) source.addEventListener(type, (msg) => onEvent(type, msg));
  }

  // ---- sending ------------------------------------------------------------------------------

  async function post(id, text) {
    // A retry sends the same id, so the message is stored once however often it is sent.
    let delay = 500;
    for (let attempt = 0; ; attempt++) {
      let r;
      try {
        r = await fetch('/chat/messages', {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ id, text }),
        });
      } catch (err) {
        r = null;
      }
      if (r && r.ok) return { ok: true };
      // Too many messages at once: wait as long as the gateway says (bounded), then the same id again.
      if (r && r.status === 429 && attempt < 4) {
        const after = Math.min(Math.max(parseInt(r.headers.get('Retry-After') || '2', 10) || 2, 1), 60);
        showNotice(`Sending too fast: retrying in ${after} s`);
        await new Promise((res) => setTimeout(res, after * 1000));
        showNotice('');
        continue;
      }
      const transient = !r || r.status === 503 || r.status === 502 || r.status === 504;
      if (!transient || attempt >= 4) {
        let detail = r ? `HTTP ${r.status}` : 'the gateway cannot be reached';
        if (r) {
          try {
            const j = await r.json();
            if (j && j.detail) detail = j.detail;
          } catch (_) { /* keep the status */ }
        }
        if (r && r.status === 401) detail = 'your chat session is no longer valid: reload the page';
        return { ok: false, detail };
      }
      await new Promise((res) => setTimeout(res, delay));
      delay *= 2;
    }
  }

  async function send() {
    const text = input.value.trim();
    if (!text) return;
    const id = uuid();
    const li = userBubble(text);
    li.dataset.state = 'sending';
    li.dataset.messageId = id;
    pending.set(id, li);
    add(li);
    input.value = '';
    resize();
    showNotice('');
    const r = await post(id, text);
    if (!r.ok) {
      pending.delete(id);
      li.dataset.state = 'failed';
      li.title = r.detail;
      showNotice(`Not sent: ${r.detail}`);
    } else if (li.dataset.state === 'sending') {
      li.dataset.state = 'sent';
    }
  }

  function resize() {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight + 2, 192)}px`;
    sendButton.disabled = input.value.trim() === '';
  }

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    send();
  });
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      send();
    }
  });
  input.addEventListener('input', resize);

  inherited().then(connect);
  connectDeltas();
  input.focus();
})();
