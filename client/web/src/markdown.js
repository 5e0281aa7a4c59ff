// Markdown to HTML for model answers (and their reasoning). The text is untrusted:
// - html: false escapes every tag the model writes, so `<img onerror=…>` shows as text;
// - a link keeps its target only with a scheme this page allows (see safeLink), so
//   javascript:, vbscript:, data: and file: links, entity-encoded or not, stay plain text;
// - images are off: a model can be talked into writing an image whose URL carries the
//   conversation to a third party, and the browser would fetch it unasked;
// - code is escaped, or highlighted by highlight.js (which escapes it); formulas are
//   rendered by KaTeX with trust: false (see mathRender.js), or shown as escaped source.
//
// It is called again on the whole text for every frame of a stream, so what is not
// finished yet must render as it will stay until it is: a fence that is still open shows
// as plain code, highlighted once its closing fence arrives; a `$$` block still open shows
// as its source (an open `$…$`, `\(…\)` or `\[…\]` is plain text by the parser's rules).
// Highlighting and KaTeX are loaded on first need (renderers.js) and their results kept
// by source, so a frame costs the parse and the new text only.
import { tex } from '@mdit/plugin-tex';
import MarkdownIt from 'markdown-it';
import { renderer } from './renderers.js';

const md = new MarkdownIt({ html: false, linkify: true, breaks: false });
md.disable('image');

// Link targets an answer may carry: web pages, mail addresses, or a path on this site.
// markdown-it checks the target after decoding its entities (`&#106;avascript:` is
// `javascript:` by then) and percent-encoding what is left (`java&#x09;script:` is
// `java%09script:`), for links, autolinks, reference definitions and linkified text
// alike. Whatever stands before a `:` that comes before any `/`, `?` or `#` is a
// scheme to the browser, and must be one of these.
const SAFE_SCHEMES = new Set(['http', 'https', 'mailto']);

export function safeLink(url) {
  const target = url.trim();
  const colon = target.indexOf(':');
  if (colon < 0) return true;
  const path = target.search(/[/?#]/);
  if (path >= 0 && path < colon) return true;
  return SAFE_SCHEMES.has(target.slice(0, colon).toLowerCase());
}
md.validateLink = safeLink;

// `$…$`, `$$…$$`, `\(…\)` and `\[…\]`; the math tokens are rendered below.
tex(md, { delimiters: 'all', render: () => '' });

const escape = md.utils.escapeHtml;

// Rendered code and formulas by their source: a streaming answer renders every frame.
const CACHE_SIZE = 500;
const cache = new Map();
function cached(key, make) {
  let html = cache.get(key);
  if (html === undefined) {
    html = make();
    if (cache.size >= CACHE_SIZE) cache.delete(cache.keys().next().value);
    cache.set(key, html);
  }
  return html;
}

// Which fences and `$$` blocks are still open: markdown-it closes them at the end of the
// text (or of their list item or quote), so look at the last line each one spans.
const CONTAINER_PREFIX = /^(?:[ \t]*>)*[ \t]*/;
function markOpenBlocks(state) {
  let lines = null;
  for (const token of state.tokens) {
    if ((token.type !== 'fence' && token.type !== 'math_block') || !token.map) continue;
    lines ??= state.src.split('\n');
    const [start, end] = token.map;
    const last = (lines[end - 1] ?? '').replace(CONTAINER_PREFIX, '').trimEnd();
    let closed;
    if (token.type === 'fence') {
      const marker = token.markup[0];
      let run = 0;
      while (last[run] === marker) run += 1;
      closed = end - start >= 2 && run >= token.markup.length && run === last.length;
    } else if (token.markup === '$$') {
      closed = last.endsWith('$$') && (end - start >= 2 || last.length >= 4);
    } else {
      closed = true; // the parser makes a \[ block only once its \] is there
    }
    token.meta = { ...token.meta, open: !closed };
  }
}
md.core.ruler.after('block', 'open_blocks', markOpenBlocks);

// Fenced and indented code get a header with the language and a copy button.
function codeBlock(content, lang, open) {
  const label = lang ? `<span class="code-lang">${escape(lang)}</span>` : '<span class="code-lang">code</span>';
  // Asked for as soon as a fence names a language, so it is likely in when the fence closes.
  const highlighter = lang ? renderer('highlight') : null;
  const highlighted =
    highlighter && !open ? cached(`code\n${lang}\n${content}`, () => highlighter.highlight(content, lang)) : null;
  const classes = [lang && `language-${escape(lang)}`, highlighted !== null && 'hljs'].filter(Boolean).join(' ');
  return (
    `<div class="code-block"><div class="code-head">${label}` +
    '<button type="button" class="copy" data-copy aria-label="Copy code">Copy</button></div>' +
    `<pre><code${classes ? ` class="${classes}"` : ''}>${highlighted ?? escape(content)}</code></pre></div>\n`
  );
}

md.renderer.rules.fence = (tokens, idx) => {
  const token = tokens[idx];
  const lang = token.info.trim().split(/\s+/)[0] || '';
  return codeBlock(token.content, lang, token.meta?.open);
};
md.renderer.rules.code_block = (tokens, idx) => codeBlock(tokens[idx].content, '', false);

const CLOSERS = { $: '$', $$: '$$', '\\(': '\\)', '\\[': '\\]' };

function formula(token, display) {
  const math = !token.meta?.open && renderer('math');
  if (!math) {
    // Not closed yet, or KaTeX not in yet: the source, as text.
    const close = token.meta?.open ? '' : CLOSERS[token.markup];
    if (!display) return `<span class="math-source">${escape(token.markup + token.content + close)}</span>`;
    const body = token.content.replace(/\n$/, '');
    return `<div class="math-source">${escape(`${token.markup}\n${body}${close && `\n${close}`}`)}</div>\n`;
  }
  const html = cached(`math\n${display}\n${token.content}`, () => math.renderMath(token.content, display));
  return display ? `<div class="math-block">${html}</div>\n` : html;
}
md.renderer.rules.math_inline = (tokens, idx) => formula(tokens[idx], false);
md.renderer.rules.math_block = (tokens, idx) => formula(tokens[idx], true);

// Links open in a new tab and give the target no handle on this page.
const defaultLinkOpen =
  md.renderer.rules.link_open || ((tokens, idx, options, env, self) => self.renderToken(tokens, idx, options));
md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
  tokens[idx].attrSet('target', '_blank');
  tokens[idx].attrSet('rel', 'noopener noreferrer nofollow');
  return defaultLinkOpen(tokens, idx, options, env, self);
};

export function renderMarkdown(text) {
  return md.render(text);
}
