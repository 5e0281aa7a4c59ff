// Markdown to HTML for model answers. The answer is untrusted text:
// - html: false escapes every tag the model writes, so `<img onerror=…>` shows as text;
// - markdown-it's default validateLink refuses javascript:, vbscript:, file: and data:
//   links, which then stay plain text;
// - images are off: a model can be talked into writing an image whose URL carries the
//   conversation to a third party, and the browser would fetch it unasked.
import MarkdownIt from 'markdown-it';

const md = new MarkdownIt({ html: false, linkify: true, breaks: false });
md.disable('image');

const escape = md.utils.escapeHtml;

// Fenced and indented code get a header with the language and a copy button.
function codeBlock(content, lang) {
  const label = lang ? `<span class="code-lang">${escape(lang)}</span>` : '<span class="code-lang">code</span>';
  const langClass = lang ? ` class="language-${escape(lang)}"` : '';
  return (
    `<div class="code-block"><div class="code-head">${label}` +
    '<button type="button" class="copy" data-copy aria-label="Copy code">Copy</button></div>' +
    `<pre><code${langClass}>${escape(content)}</code></pre></div>\n`
  );
}

md.renderer.rules.fence = (tokens, idx) => {
  const token = tokens[idx];
  const lang = token.info.trim().split(/\s+/)[0] || '';
  return codeBlock(token.content, lang);
};
md.renderer.rules.code_block = (tokens, idx) => codeBlock(tokens[idx].content, '');

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
