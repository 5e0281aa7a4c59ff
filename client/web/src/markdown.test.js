import { describe, expect, test } from 'vitest';
import { renderMarkdown } from './markdown.js';

describe('renderMarkdown', () => {
  test('raw HTML is escaped, not rendered', () => {
    const html = renderMarkdown('look <img src=x onerror=alert(1)> here');
    expect(html).not.toContain('<img');
    expect(html).toContain('&lt;img src=x onerror=alert(1)&gt;');
  });

  test('javascript: links stay text', () => {
    const html = renderMarkdown('[click](javascript:alert(1)) and [ok](https://example.com)');
    expect(html).not.toMatch(/href="javascript:/i);
    expect(html).toContain('[click](javascript:alert(1))');
    expect(html).toContain('href="https://example.com"');
    expect(html).toContain('rel="noopener noreferrer nofollow"');
  });

  test('images are not loaded', () => {
    expect(renderMarkdown('![pixel](https://tracker.example/p.gif)')).not.toContain('<img');
  });

  test('code blocks get a language label and a copy button, code escaped', () => {
    const html = renderMarkdown('```python\nprint("<b>")\n```');
    expect(html).toContain('class="code-lang">python<');
    expect(html).toContain('data-copy');
    expect(html).toContain('print(&quot;&lt;b&gt;&quot;)');
  });

  test('an unclosed fence (mid-stream) still renders as code', () => {
    expect(renderMarkdown('```js\nconst a = 1')).toContain('<pre><code class="language-js">');
  });
});
