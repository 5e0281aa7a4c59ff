import { memo, useMemo } from 'react';
import { renderMarkdown } from '../markdown.js';

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Clipboard API refused (no focus, or an insecure origin): fall back to a selection.
    const area = document.createElement('textarea');
    area.value = text;
    area.setAttribute('readonly', '');
    area.style.position = 'fixed';
    area.style.opacity = '0';
    document.body.append(area);
    area.select();
    const ok = document.execCommand('copy');
    area.remove();
    return ok;
  }
}

// One click handler serves every copy button in the rendered HTML.
function onClick(event) {
  const button = event.target.closest('button[data-copy]');
  if (!button) return;
  const code = button.closest('.code-block')?.querySelector('code');
  if (!code) return;
  copyText(code.textContent).then((ok) => {
    button.textContent = ok ? 'Copied' : 'Copy failed';
    setTimeout(() => {
      button.textContent = 'Copy';
    }, 1500);
  });
}

/** Untrusted markdown, rendered safely (see markdown.js); parsed again only when text changes. */
function Markdown({ text }) {
  const html = useMemo(() => renderMarkdown(text), [text]);
  // Safe: markdown-it escapes all HTML in the text (html: false) and vets link targets.
  return <div className="markdown" onClick={onClick} dangerouslySetInnerHTML={{ __html: html }} />;
}

export default memo(Markdown);
