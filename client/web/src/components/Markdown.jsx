import { memo, useMemo, useSyncExternalStore } from 'react';
import { renderMarkdown } from '../markdown.js';
import { renderersVersion, subscribe } from '../renderers.js';

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

/**
 * Untrusted markdown, rendered safely (see markdown.js); parsed again only when the text
 * changes, or once when the highlighter or KaTeX it asked for has arrived.
 */
function Markdown({ text, className = 'markdown', testId }) {
  // renderMarkdown reads the renderers loaded so far: a new one is a reason to render again.
  const renderers = useSyncExternalStore(subscribe, renderersVersion, renderersVersion);
  const html = useMemo(() => renderMarkdown(text), [text, renderers]);
  // Safe: markdown-it escapes all HTML in the text (html: false) and vets link targets;
  // highlight.js escapes code; KaTeX runs with trust: false.
  return (
    <div className={className} data-testid={testId} onClick={onClick} dangerouslySetInnerHTML={{ __html: html }} />
  );
}

export default memo(Markdown);
