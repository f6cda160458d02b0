// The sandbox console: a client of the mock pod's and the simulator's control APIs (proxied
// same-origin under /pod and /wa). Live by polling; only what changed is drawn again. Message
// bodies are rebuilt from an allow-list of elements, never inserted as HTML.
'use strict';

const POLL_MS = 700;
const $ = (selector) => document.querySelector(selector);

const state = {
  dir: null,
  advisor: null,
  stream: null,
  streams: [],
  streamsKey: '',
  seen: new Set(), // message ids drawn in #messages
  phone: null,
  chat: 'business', // 'business' or a group id
  waKey: '',
  chatsKey: '',
  phonesKey: '',
  replyTo: null,
};

// ---------- HTTP ----------

async function api(path, options) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function post(path, body) {
  return api(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
}

let toastTimer = null;
function toast(text, bad) {
  const el = $('#toast');
  el.textContent = text;
  el.className = bad ? 'toast bad' : 'toast';
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, bad ? 6000 : 3500);
}

// Runs an action, telling the person when it fails.
async function attempt(what, action) {
  try {
    return await action();
  } catch (e) {
    toast(`${what}: ${e.message}`, true);
    return undefined;
  }
}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child);
    }
  }
  return node;
}

// ---------- people ----------

function symphonyPeople() {
  return [state.dir.bot, ...state.dir.advisors];
}

function userName(id) {
  const person = symphonyPeople().find((p) => p.userId === id);
  return person ? person.name : `user ${id}`;
}

function phoneLabel(phone) {
  const contact = state.dir.contacts.find((c) => c.phone === phone);
  if (phone === state.dir.businessPhone) {
    return `${state.dir.bot.name} (business)`;
  }
  return contact ? `${contact.name} (+${phone})` : `+${phone}`;
}

// ---------- PresentationML → DOM (allow-list) ----------

const KEEP = new Set(['p', 'div', 'span', 'b', 'strong', 'i', 'em', 'u', 's', 'del', 'code', 'pre',
  'br', 'hr', 'ul', 'ol', 'li', 'table', 'thead', 'tbody', 'tfoot', 'tr', 'td', 'th', 'h1', 'h2',
  'h3', 'h4', 'h5', 'h6', 'a', 'label', 'blockquote', 'sub', 'sup']);
const DROP = new Set(['script', 'style', 'iframe', 'object', 'embed', 'link', 'meta', 'base',
  'template', 'svg', 'math', 'img', 'video', 'audio', 'source', 'noscript']);

// Parses PresentationML: as XML first (the pod's output is XML, and Elements written as
// MessageML tags keep their self-closing form), as HTML when it is not well-formed.
function parsePresentation(pml) {
  const xml = new DOMParser().parseFromString(pml, 'application/xml');
  if (!xml.getElementsByTagName('parsererror').length && xml.documentElement) {
    return [xml.documentElement];
  }
  return Array.from(new DOMParser().parseFromString(pml, 'text/html').body.childNodes);
}

function renderPresentation(pml, message) {
  const fragment = document.createDocumentFragment();
  const scope = { message, form: null, prefix: `m${Math.random().toString(36).slice(2, 8)}-` };
  for (const node of parsePresentation(pml)) {
    appendSafe(fragment, node, scope);
  }
  return fragment;
}

function safeHref(href) {
  return /^(https?:|mailto:)/i.test((href || '').trim()) ? href.trim() : null;
}

function appendSafe(parent, node, scope) {
  if (node.nodeType === Node.TEXT_NODE || node.nodeType === Node.CDATA_SECTION_NODE) {
    parent.append(document.createTextNode(node.nodeValue));
    return;
  }
  if (node.nodeType !== Node.ELEMENT_NODE) {
    return;
  }
  const tag = node.localName.toLowerCase();
  const attr = (name) => node.getAttribute(name);
  const children = (target) => { for (const c of node.childNodes) appendSafe(target, c, scope); };
  if (DROP.has(tag)) {
    return;
  }
  if (tag === 'form') {
    parent.append(buildForm(node, scope));
    return;
  }
  if (scope.form) {
    const field = formField(node, tag, scope);
    if (field) {
      parent.append(field);
      return;
    }
  }
  if (tag === 'mention') { // a raw MessageML mention (the pod renders them as spans)
    parent.append(el('span', { className: 'mention', textContent: `@${userName(Number(attr('uid')))}` }));
    return;
  }
  if (!KEEP.has(tag)) {
    children(parent);
    return;
  }
  const out = document.createElement(tag);
  if (tag === 'a') {
    const href = safeHref(attr('href'));
    if (href) {
      out.href = href;
      out.target = '_blank';
      out.rel = 'noopener noreferrer';
    }
  } else if (tag === 'span' && (attr('class') || '').split(/\s+/).includes('entity')) {
    out.className = 'mention';
  } else if ((tag === 'td' || tag === 'th')) {
    for (const span of ['colspan', 'rowspan']) {
      if (/^\d{1,2}$/.test(attr(span) || '')) out.setAttribute(span, attr(span));
    }
  } else if (tag === 'label' && attr('for')) {
    out.htmlFor = scope.prefix + attr('for');
  }
  children(out);
  parent.append(out);
}

// ---------- Elements forms ----------

function buildForm(node, scope) {
  const form = el('form', { className: 'elements-form' });
  form.dataset.formId = node.getAttribute('id') || '';
  const inner = { ...scope, form };
  for (const c of node.childNodes) appendSafe(form, c, inner);
  form.addEventListener('submit', (e) => e.preventDefault());
  return form;
}

function copyCommon(node, input, scope) {
  for (const name of ['name', 'placeholder', 'maxlength']) {
    const v = node.getAttribute(name);
    if (v !== null) input.setAttribute(name, v);
  }
  if (node.getAttribute('required') === 'true') input.required = true;
  if (node.getAttribute('id')) input.id = scope.prefix + node.getAttribute('id');
}

function labelled(node, input) {
  const label = node.getAttribute('label');
  if (!label) return input;
  return el('span', { className: 'field' }, el('label', { textContent: label }), input);
}

// One input of a form, as the agent renders it (input, textarea, div.person-selector, button)
// or as written in MessageML (text-field, person-selector, checkbox, textarea, button).
function formField(node, tag, scope) {
  const attr = (name) => node.getAttribute(name);
  const cls = (attr('class') || '').split(/\s+/);
  if (tag === 'person-selector' || (tag === 'div' && cls.includes('person-selector'))) {
    const input = el('input', { type: 'text', className: 'person-selector' });
    input.name = attr('data-name') || attr('name') || '';
    input.placeholder = attr('data-placeholder') || attr('placeholder') || 'Symphony user ids or names, comma-separated';
    const preset = attr('data-value') || attr('value');
    if (preset) {
      try { input.value = JSON.parse(preset).join(', '); } catch (_) { input.value = ''; }
    }
    if (attr('id')) input.id = scope.prefix + attr('id');
    return labelled(node, input);
  }
  if (tag === 'text-field' || (tag === 'input' && (attr('type') || 'text') === 'text')) {
    const input = el('input', { type: 'text' });
    copyCommon(node, input, scope);
    input.value = tag === 'input' ? (attr('value') || '') : node.textContent;
    return labelled(node, input);
  }
  if (tag === 'textarea') {
    const area = el('textarea', { rows: 3 });
    copyCommon(node, area, scope);
    area.value = node.textContent;
    return labelled(node, area);
  }
  if (tag === 'input' && attr('type') === 'checkbox') {
    const box = el('input', { type: 'checkbox', name: attr('name') || '', value: attr('value') || 'on' });
    box.checked = attr('checked') === 'true' || attr('checked') === '';
    if (attr('id')) box.id = scope.prefix + attr('id');
    return box;
  }
  if (tag === 'checkbox') {
    const box = el('input', { type: 'checkbox', name: attr('name') || '', value: attr('value') || 'on' });
    box.checked = attr('checked') === 'true';
    return el('label', { className: 'check' }, box, node.textContent.trim());
  }
  if (tag === 'button') {
    const kind = attr('type') === 'reset' ? 'reset' : 'action';
    const button = el('button', { type: 'button', textContent: node.textContent.trim() || 'Submit' });
    button.name = attr('name') || '';
    button.dataset.kind = kind;
    button.addEventListener('click', () => onFormButton(button, scope));
    return button;
  }
  return null;
}

function personIds(text) {
  const ids = [];
  for (const token of text.split(/[,;\n]+/).map((t) => t.trim()).filter(Boolean)) {
    if (/^\d+$/.test(token)) {
      ids.push(Number(token));
      continue;
    }
    const wanted = token.replace(/^@/, '').toLowerCase();
    const person = symphonyPeople().find((p) => p.name.toLowerCase() === wanted);
    if (!person) throw new Error(`no Symphony user named ${JSON.stringify(token)}`);
    ids.push(person.userId);
  }
  return ids;
}

async function onFormButton(button, scope) {
  const form = scope.form;
  if (button.dataset.kind === 'reset') {
    form.reset();
    return;
  }
  const values = { action: button.name };
  try {
    for (const input of form.querySelectorAll('input, textarea')) {
      if (!input.name) continue;
      if (input.type === 'checkbox') {
        values[input.name] = input.checked ? input.value : false;
      } else if (input.classList.contains('person-selector')) {
        values[input.name] = personIds(input.value);
      } else {
        values[input.name] = input.value;
      }
    }
  } catch (e) {
    toast(e.message, true);
    return;
  }
  const done = await attempt('Form not sent', () => post('/pod/_sandbox/forms', {
    as: state.advisor, messageId: scope.message.messageId, formId: form.dataset.formId, values,
  }));
  if (done) {
    form.classList.add('submitted');
    for (const b of form.querySelectorAll('button')) b.disabled = true;
    form.append(el('span', { className: 'submitted-note', textContent: 'Submitted' }));
  }
}

// ---------- Symphony pane ----------

function streamTitle(stream) {
  if (stream.type === 'ROOM') return stream.name || '(unnamed room)';
  const others = stream.members.map((m) => m.userId).filter((id) => id !== state.advisor);
  return `IM: ${others.map(userName).join(', ') || 'myself'}`;
}

function currentStream() {
  return state.streams.find((s) => s.streamId === state.stream) || null;
}

async function refreshSymphony() {
  const advisor = state.advisor;
  const streams = await api(`/pod/_sandbox/streams?member=${advisor}`);
  if (advisor !== state.advisor) return;
  const key = JSON.stringify(streams);
  if (key !== state.streamsKey) {
    state.streamsKey = key;
    state.streams = streams;
    if (!currentStream()) {
      selectStream(streams.length ? streams[0].streamId : null);
    }
    drawStreams();
    drawStreamHead();
  }
  const stream = state.stream;
  if (!stream) return;
  const messages = await api(`/pod/_sandbox/streams/${encodeURIComponent(stream)}/messages`);
  if (stream !== state.stream || advisor !== state.advisor) return;
  drawMessages(messages);
}

function drawStreams() {
  const list = $('#streams');
  list.replaceChildren();
  for (const s of state.streams) {
    const item = el('li', { className: 'stream' },
      streamTitle(s),
      el('span', { className: 'kind', textContent: s.type === 'ROOM' ? `room · ${plural(s.members.length, 'member')}` : 'instant message' }));
    item.dataset.streamId = s.streamId;
    if (s.streamId === state.stream) item.classList.add('selected');
    if (!s.active) item.classList.add('inactive');
    item.addEventListener('click', () => { selectStream(s.streamId); drawStreams(); drawStreamHead(); refreshSoon(); });
    list.append(item);
  }
  if (!state.streams.length) {
    list.append(el('li', { className: 'empty', textContent: 'No chats yet' }));
  }
}

function selectStream(streamId) {
  if (streamId === state.stream) return;
  state.stream = streamId;
  state.seen = new Set();
  $('#messages').replaceChildren();
}

function drawStreamHead() {
  const s = currentStream();
  $('#stream-title').textContent = s ? streamTitle(s) + (s.active ? '' : ' (deactivated)') : '—';
  const members = $('#members');
  members.replaceChildren();
  const actions = $('#room-actions');
  if (!s || s.type !== 'ROOM') {
    actions.hidden = true;
    return;
  }
  members.append('Members: ');
  s.members.forEach((m, i) => {
    if (i) members.append(', ');
    members.append(el('span', { className: m.owner ? 'owner' : '', textContent: userName(m.userId) }));
  });
  actions.hidden = false;
  const select = $('#member');
  const chosen = select.value;
  select.replaceChildren(...symphonyPeople()
    .filter((p) => p.userId !== state.advisor)
    .map((p) => el('option', { value: String(p.userId), textContent: p.name })));
  if (chosen) select.value = chosen;
}

function drawMessages(messages) {
  const box = $('#messages');
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  let added = false;
  for (const m of messages) {
    if (state.seen.has(m.messageId)) continue;
    state.seen.add(m.messageId);
    box.append(messageElement(m));
    added = true;
  }
  if (!messages.length && !box.children.length) {
    box.append(el('div', { className: 'empty', textContent: 'No messages yet' }));
  } else if (added) {
    const empty = box.querySelector(':scope > .empty');
    if (empty) empty.remove();
  }
  if (added && nearBottom) box.scrollTop = box.scrollHeight;
}

function messageElement(m) {
  const who = m.user.userId;
  const item = el('div', { className: 'message' });
  item.dataset.messageId = m.messageId;
  if (who === state.dir.bot.userId) item.classList.add('bot');
  if (who === state.advisor) item.classList.add('mine');
  const time = new Date(m.timestamp).toLocaleTimeString();
  item.append(el('div', { className: 'meta' }, el('b', { textContent: m.user.displayName || userName(who) }), ` · ${time}`));
  const body = el('div', { className: 'body' });
  body.append(renderPresentation(m.message, m));
  item.append(body);
  return item;
}

function escapeXml(ch) {
  switch (ch) {
    case '&': return '&amp;';
    case '<': return '&lt;';
    case '>': return '&gt;';
    case '"': return '&quot;';
    case "'": return '&apos;';
    case '\n': return '<br/>';
    default: return ch;
  }
}

// Typed text → MessageML: escaped, line breaks kept, `@Full Name` of a known user → mention.
function toMessageML(text) {
  const people = symphonyPeople().slice().sort((a, b) => b.name.length - a.name.length);
  let out = '';
  let i = 0;
  while (i < text.length) {
    if (text[i] === '@') {
      const person = people.find((p) => text.startsWith(p.name, i + 1));
      if (person) {
        out += `<mention uid="${person.userId}"/>`;
        i += 1 + person.name.length;
        continue;
      }
    }
    out += escapeXml(text[i]);
    i += 1;
  }
  return `<messageML>${out}</messageML>`;
}

async function sendSymphony() {
  const box = $('#compose-text');
  const text = box.value.trim();
  if (!text || !state.stream) return;
  const sent = await attempt('Message not sent', () => post(
    `/pod/_sandbox/streams/${encodeURIComponent(state.stream)}/messages`,
    { as: state.advisor, messageML: toMessageML(text) },
  ));
  if (sent) {
    box.value = '';
    refreshSoon();
  }
}

async function roomAction(action, extra) {
  if (!state.stream) return;
  const done = await attempt(`${action} refused`, () => post(
    `/pod/_sandbox/streams/${encodeURIComponent(state.stream)}/actions`,
    { as: state.advisor, action, ...extra },
  ));
  if (done) {
    toast(`${action}: done`);
    refreshSoon();
  }
}

// ---------- WhatsApp pane ----------

const LINK = /https:\/\/chat\.whatsapp\.com\/[A-Za-z0-9_-]+/g;

async function refreshWhatsApp() {
  const phone = state.phone;
  if (!phone) return;
  const base = `/wa/_sandbox/wa/phones/${phone}`;
  const [inbox, me, groups, phones] = await Promise.all([
    api(`${base}/inbox`), api(base), api('/wa/_sandbox/wa/groups'), api('/wa/_sandbox/wa/phones'),
  ]);
  if (phone !== state.phone) return;
  const phonesKey = JSON.stringify(phones);
  if (phonesKey !== state.phonesKey) {
    state.phonesKey = phonesKey;
    drawPhones(phones);
  }
  const mine = groups.filter((g) => g.participants.includes(phone) || g.pendingRequests.includes(phone));
  const chatsKey = JSON.stringify([state.chat, mine.map((g) => [g.id, g.subject, g.participants.includes(phone)])]);
  if (chatsKey !== state.chatsKey) {
    state.chatsKey = chatsKey;
    drawChats(mine);
  }
  const group = groups.find((g) => g.id === state.chat);
  if (state.chat !== 'business' && !(group && group.participants.includes(phone))) {
    selectChat('business'); // left, removed, or the group is gone
    return;
  }
  const view = state.chat === 'business'
    ? businessChat(inbox, me.sent || [])
    : group.messages.map((m) => ({ ...m, out: m.from === phone }));
  const waKey = JSON.stringify([state.chat, view]);
  if (waKey !== state.waKey) {
    state.waKey = waKey;
    drawWaMessages(view, group);
  }
}

// The 1:1 chat with the business: what the phone received and what it wrote, in time order.
function businessChat(inbox, sent) {
  const received = inbox.filter((m) => !m.groupId).map((m) => ({ ...m, out: false }));
  const written = sent.map((m) => ({ ...m, out: true }));
  return received.concat(written).sort((a, b) => a.timestamp - b.timestamp);
}

function drawPhones(known) {
  const select = $('#phone');
  const options = state.dir.contacts.map((c) => ({ phone: c.phone, label: `${c.name} (+${c.phone})` }));
  for (const p of known) {
    if (p.phone !== state.dir.businessPhone && !options.some((o) => o.phone === p.phone)) {
      options.push({ phone: p.phone, label: p.name ? `${p.name} (+${p.phone})` : `+${p.phone}` });
    }
  }
  if (state.phone && !options.some((o) => o.phone === state.phone)) {
    options.push({ phone: state.phone, label: `+${state.phone}` });
  }
  select.replaceChildren(...options.map((o) => el('option', { value: o.phone, textContent: o.label })));
  select.value = state.phone;
}

function drawChats(groups) {
  const list = $('#chats');
  list.replaceChildren();
  const business = el('li', { className: 'chat' }, state.dir.bot.name,
    el('span', { className: 'kind', textContent: 'business · 1:1' }));
  business.dataset.chat = 'business';
  list.append(business);
  for (const g of groups) {
    const joined = g.participants.includes(state.phone);
    const item = el('li', { className: joined ? 'chat' : 'chat pending' }, g.subject,
      el('span', { className: 'kind', textContent: joined ? `group · ${plural(g.participants.length, 'participant')}` : 'join request pending' }));
    item.dataset.chat = g.id;
    if (!joined) {
      const cancel = el('button', { type: 'button', textContent: 'Cancel request' });
      cancel.addEventListener('click', async (e) => {
        e.stopPropagation();
        if (await attempt('Not cancelled', () => post(`/wa/_sandbox/wa/phones/${state.phone}/cancel`, { groupId: g.id }))) {
          toast('Join request withdrawn');
          refreshSoon();
        }
      });
      item.append(cancel);
    }
    list.append(item);
  }
  for (const item of list.children) {
    if (item.dataset.chat === state.chat) item.classList.add('selected');
    if (!item.classList.contains('pending')) {
      item.addEventListener('click', () => { selectChat(item.dataset.chat); refreshSoon(); });
    }
  }
}

function selectChat(chat) {
  state.chat = chat;
  state.chatsKey = '';
  state.waKey = '';
  setReply(null);
}

function drawWaMessages(view, group) {
  $('#chat-title').textContent = state.chat === 'business'
    ? `${state.dir.bot.name} (+${state.dir.businessPhone})`
    : group.subject;
  $('#leave').hidden = state.chat === 'business';
  const box = $('#wa-messages');
  box.replaceChildren();
  if (!view.length) {
    box.append(el('div', { className: 'empty', textContent: 'No messages yet' }));
  }
  const byId = new Map(view.map((m) => [m.id, m]));
  for (const m of view) {
    box.append(waMessage(m, byId));
  }
  box.scrollTop = box.scrollHeight;
}

function waMessage(m, byId) {
  const item = el('div', { className: m.out ? 'wa-message out' : 'wa-message in' });
  item.dataset.id = m.id;
  if (!m.out && state.chat !== 'business') {
    item.append(el('div', { className: 'from', textContent: phoneLabel(m.from) }));
  }
  if (m.contextId) {
    const quoted = byId.get(m.contextId);
    item.append(el('div', { className: 'quote', textContent: quoted ? `↳ ${excerpt(quoted.text)}` : '↳ a message' }));
  }
  if (m.type === 'template' && m.template) {
    item.append(el('div', { className: 'template', textContent: `template ${m.template.name} (${m.template.language})` }));
  }
  const text = m.type === 'template' && m.template && m.template.params.length
    ? m.template.params.join('\n')
    : m.text;
  item.append(withLinks(text));
  const tools = el('div', { className: 'tools' });
  const links = new Set((text.match(LINK) || []));
  for (const link of links) {
    const tap = el('button', { type: 'button', className: 'tap', textContent: 'Tap link' });
    tap.dataset.link = link;
    tap.addEventListener('click', () => tapLink(link));
    tools.append(tap);
  }
  if (!m.out) {
    const reply = el('button', { type: 'button', className: 'reply', textContent: 'Reply' });
    reply.addEventListener('click', () => setReply(m));
    tools.append(reply);
  }
  item.append(tools);
  return item;
}

function plural(n, noun) {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

function excerpt(text) {
  const t = (text || '').replace(/\s+/g, ' ');
  return t.length > 60 ? `${t.slice(0, 57)}…` : t;
}

// WhatsApp's own formatting: *bold*, _italic_, ~strike~, `code` and ```code```, each marker
// pair at word boundaries, as the phone shows it.
const WA_FORMAT = /```([^`]+)```|(?<![\w*])\*([^*\n]+)\*(?![\w*])|(?<![\w_])_([^_\n]+)_(?![\w_])|(?<![\w~])~([^~\n]+)~(?![\w~])|`([^`\n]+)`/g;
const WA_TAGS = ['code', 'b', 'i', 's', 'code'];

function formatted(text) {
  const fragment = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(WA_FORMAT)) {
    const group = match.slice(1).findIndex((g) => g !== undefined);
    fragment.append(text.slice(last, match.index), el(WA_TAGS[group], { textContent: match[group + 1] }));
    last = match.index + match[0].length;
  }
  fragment.append(text.slice(last));
  return fragment;
}

// Text with invite links shown as links (that the phone taps with the button, not the browser).
function withLinks(text) {
  const span = el('span', { className: 'text' });
  let last = 0;
  for (const match of text.matchAll(LINK)) {
    span.append(formatted(text.slice(last, match.index)), el('span', { className: 'link', textContent: match[0] }));
    last = match.index + match[0].length;
  }
  span.append(formatted(text.slice(last)));
  return span;
}

async function tapLink(link) {
  const answer = await attempt('Tap failed', () => post(`/wa/_sandbox/wa/phones/${state.phone}/tap`, { link }));
  if (!answer) return;
  if (answer.result === 'requested') toast('Request to join sent: the group admin approves it');
  else if (answer.result === 'joined') toast('You joined the group');
  else toast(`Cannot join: ${answer.reason || answer.result}`, true);
  refreshSoon();
}

function setReply(message) {
  state.replyTo = message ? message.id : null;
  $('#reply-to').hidden = !message;
  $('#reply-excerpt').textContent = message ? `Replying to: ${excerpt(message.text)}` : '';
}

async function sendWhatsApp() {
  const box = $('#wa-compose-text');
  const text = box.value.trim();
  if (!text || !state.phone) return;
  const body = { to: state.chat, text };
  if (state.replyTo) body.contextId = state.replyTo;
  const sent = await attempt('Message not sent', () => post(`/wa/_sandbox/wa/phones/${state.phone}/messages`, body));
  if (sent) {
    box.value = '';
    setReply(null);
    refreshSoon();
  }
}

function choosePhone(phone) {
  state.phone = phone;
  state.phonesKey = '';
  selectChat('business');
  refreshSoon();
}

// ---------- wiring ----------

let timer = null;
let running = false;
async function tick() {
  clearTimeout(timer);
  if (running) return;
  running = true;
  const status = $('#status');
  try {
    await Promise.all([refreshSymphony(), refreshWhatsApp()]);
    status.textContent = 'live';
    status.className = 'status';
  } catch (e) {
    status.textContent = `offline: ${e.message}`;
    status.className = 'status offline';
  } finally {
    running = false;
    timer = setTimeout(tick, POLL_MS);
  }
}

function refreshSoon() {
  setTimeout(tick, 0);
}

function onEnter(textarea, send) {
  textarea.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      send();
    }
  });
}

async function start() {
  state.dir = await api('/directory.json');
  const advisors = $('#advisor');
  advisors.replaceChildren(...state.dir.advisors.map((a) => el('option', { value: String(a.userId), textContent: a.name })));
  state.advisor = state.dir.advisors.length ? state.dir.advisors[0].userId : null;
  advisors.addEventListener('change', () => {
    state.advisor = Number(advisors.value);
    state.streamsKey = '';
    selectStream(null);
    refreshSoon();
  });
  $('#composer').addEventListener('submit', (e) => { e.preventDefault(); sendSymphony(); });
  onEnter($('#compose-text'), sendSymphony);
  $('#rename').addEventListener('click', () => {
    const name = $('#rename-name').value.trim();
    if (name) roomAction('rename', { name }).then(() => { $('#rename-name').value = ''; });
  });
  for (const button of document.querySelectorAll('.member-action')) {
    button.addEventListener('click', () => roomAction(button.dataset.action, { userId: Number($('#member').value) }));
  }
  $('#deactivate').addEventListener('click', () => {
    if (confirm('Deactivate this room? Its WhatsApp group is deleted.')) roomAction('deactivate', {});
  });

  state.phone = state.dir.contacts.length ? state.dir.contacts[0].phone : null;
  drawPhones([]);
  $('#phone').addEventListener('change', () => choosePhone($('#phone').value));
  $('#phone-other').addEventListener('submit', (e) => {
    e.preventDefault();
    const digits = $('#phone-number').value.replace(/[^0-9]/g, '');
    if (digits.length < 8 || digits.length > 15) {
      toast('A phone number has 8 to 15 digits, like +447911123456', true);
      return;
    }
    $('#phone-number').value = '';
    choosePhone(digits);
  });
  $('#wa-composer').addEventListener('submit', (e) => { e.preventDefault(); sendWhatsApp(); });
  onEnter($('#wa-compose-text'), sendWhatsApp);
  $('#reply-cancel').addEventListener('click', () => setReply(null));
  $('#leave').addEventListener('click', async () => {
    const group = state.chat;
    if (group === 'business') return;
    if (await attempt('Not left', () => post(`/wa/_sandbox/wa/phones/${state.phone}/leave`, { groupId: group }))) {
      toast('You left the group');
      selectChat('business');
      refreshSoon();
    }
  });
  tick();
}

start().catch((e) => {
  const status = $('#status');
  status.textContent = `cannot start: ${e.message}`;
  status.className = 'status offline';
});
