import { describe, expect, test } from 'vitest';
import { renderMarkdown, safeLink } from './markdown.js';
import { load } from './renderers.js';

// Tags and attributes no rendered answer may carry, whatever the model writes. Text is
// escaped, so every `<` left in the HTML opens a tag the renderer made.
function expectInert(html) {
  const tags = html.match(/<[a-z][^>]*>/gi) ?? [];
  for (const tag of tags) {
    const names = tag.replace(/"[^"]*"/g, '""'); // attribute values are escaped text
    expect(names).not.toMatch(/^<(script|img|iframe|object|embed|svg|style|form|input|link|meta|base|details)\b/i);
    expect(names).not.toMatch(/\son[a-z]+\s*=/i);
    expect(names).not.toMatch(/\s(src|action|formaction|xlink:href)\s*=/i);
    expect(tag).not.toMatch(/\shref\s*=\s*"(?!https?:|mailto:|[/#])/i);
  }
}

const links = (html) => [...html.matchAll(/<a\s[^>]*href="([^"]*)"/g)].map((m) => m[1]);

// Before any renderer is loaded (these run first: the module state is per test file).
describe('before the highlighter and KaTeX are in', () => {
  test('code shows plain and escaped, formulas as their source', () => {
    const html = renderMarkdown('```python\nprint("<b>")\n```\n\nand $x^2$ here');
    expect(html).toContain('<pre><code class="language-python">print(&quot;&lt;b&gt;&quot;)');
    expect(html).toContain('<span class="math-source">$x^2$</span>');
    expect(html).not.toContain('katex');
  });

  test('a formula in the source is escaped too', () => {
    const html = renderMarkdown('$<img src=x onerror=alert(1)>$');
    expect(html).toContain('$&lt;img src=x onerror=alert(1)&gt;$');
    expectInert(html);
  });
});

describe('markdown safety', () => {
  test('raw HTML is escaped, not rendered', () => {
    const html = renderMarkdown('look <img src=x onerror=alert(1)> here');
    expect(html).not.toContain('<img');
    expect(html).toContain('&lt;img src=x onerror=alert(1)&gt;');
  });

  test.each([
    '<script>alert(1)</script>',
    '<svg onload=alert(1)>',
    '<iframe src="https://evil.example"></iframe>',
    '<a href="javascript:alert(1)">x</a>',
    '<div style="background:url(https://evil.example)">x</div>',
    '<!-- <script>alert(1)</script> -->',
    '<details open ontoggle=alert(1)>',
  ])('raw HTML in the reply shows as text: %s', (raw) => {
    for (const text of [raw, `para\n\n${raw}\n\nmore`, `- ${raw}`, `> ${raw}`, `**${raw}**`]) {
      const html = renderMarkdown(text);
      expectInert(html);
      expect(html).toContain('&lt;');
    }
  });

  test('javascript: links stay text', () => {
    const html = renderMarkdown('[click](javascript:alert(1)) and [ok](https://example.com)');
    expect(html).not.toMatch(/href="javascript:/i);
    expect(html).toContain('[click](javascript:alert(1))');
    expect(html).toContain('href="https://example.com"');
    expect(html).toContain('rel="noopener noreferrer nofollow"');
  });

  test.each([
    ['javascript', '[x](javascript:alert(1))'],
    ['upper case', '[x](JaVaScRiPt:alert(1))'],
    ['decimal entity', '[x](&#106;avascript:alert(1))'],
    ['hex entity', '[x](&#x6A;avascript:alert(1))'],
    ['padded entity', '[x](&#0000106;avascript:alert(1))'],
    ['tab entity', '[x](java&#x09;script:alert(1))'],
    ['newline entity', '[x](java&#x0A;script:alert(1))'],
    ['named colon entity', '[x](javascript&colon;alert(1))'],
    ['control character', '[x](<\u0001javascript:alert(1)>)'],
    ['leading space', '[x](< javascript:alert(1)>)'],
    ['angle brackets', '[x](<javascript:alert(1)>)'],
    ['vbscript', '[x](vbscript:msgbox(1))'],
    ['data html', '[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)'],
    ['data image', '[x](data:image/png;base64,iVBORw0KGgo=)'],
    ['data svg', '[x](data:image/svg+xml,<svg onload=alert(1)>)'],
    ['file', '[x](file:///etc/passwd)'],
    ['reference definition', '[x][evil]\n\n[evil]: javascript:alert(1)'],
    ['entity-encoded reference', '[x][evil]\n\n[evil]: &#106;avascript:alert(1)'],
    ['autolink', '<javascript:alert(1)>'],
    ['entity in autolink', '<javascript&#58;alert(1)>'],
    ['vbscript autolink', '<vbscript:msgbox(1)>'],
    ['data autolink', '<data:text/html,<script>alert(1)</script>>'],
    ['linkified', 'see javascript:alert(1) now'],
  ])('a %s link gets no target', (_, text) => {
    const html = renderMarkdown(text);
    expect(links(html)).toEqual([]);
    expectInert(html);
  });

  test('links keep web, mail and same-site targets, opened apart from this page', () => {
    const html = renderMarkdown(
      '[a](https://example.com/x?y=1#z) [b](http://example.com) <https://example.org> ' +
        '[c](mailto:someone@example.com) [d](/docs/page) [e](#part) https://linkified.example/ok',
    );
    expect(links(html)).toEqual([
      'https://example.com/x?y=1#z',
      'http://example.com',
      'https://example.org',
      'mailto:someone@example.com',
      '/docs/page',
      '#part',
      'https://linkified.example/ok',
    ]);
    expect(html.match(/target="_blank"/g)).toHaveLength(7);
    expect(html.match(/rel="noopener noreferrer nofollow"/g)).toHaveLength(7);
  });

  test('a link title cannot break out of its attribute', () => {
    const html = renderMarkdown('[x](https://example.com "a\\" onmouseover=\\"alert(1)")');
    expect(html).toContain('title="a&quot; onmouseover=&quot;alert(1)"');
    expectInert(html);
  });

  test('safeLink: only http, https and mailto schemes, or none', () => {
    expect(safeLink('https://a.example')).toBe(true);
    expect(safeLink('MAILTO:x@y.z')).toBe(true);
    expect(safeLink('/path:with:colons')).toBe(true);
    expect(safeLink('page?q=a:b')).toBe(true);
    expect(safeLink('java%09script:alert(1)')).toBe(false);
    expect(safeLink('tel:123')).toBe(false);
    expect(safeLink(' javascript:alert(1)')).toBe(false);
  });

  test('images are not loaded', () => {
    expect(renderMarkdown('![pixel](https://tracker.example/p.gif)')).not.toContain('<img');
  });
});

describe('code', () => {
  test('code blocks get a language label and a copy button, code escaped', () => {
    const html = renderMarkdown('```python\nprint("<b>")\n```');
    expect(html).toContain('class="code-lang">python<');
    expect(html).toContain('data-copy');
    expect(html).toContain('print(&quot;&lt;b&gt;&quot;)');
  });

  test('an unclosed fence (mid-stream) still renders as code', () => {
    expect(renderMarkdown('```js\nconst a = 1')).toContain('<pre><code class="language-js">');
  });

  test('a closed fence is highlighted; its code stays escaped', async () => {
    await load('highlight');
    const html = renderMarkdown('```python\ndef f():\n    return "<script>alert(1)</script>"\n```');
    expect(html).toContain('<code class="language-python hljs">');
    expect(html).toContain('<span class="hljs-keyword">def</span>');
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expectInert(html);
  });

  test('a fence still open stays plain until its closing fence arrives', async () => {
    await load('highlight');
    const open = '```js\nconst a = "x";\nlet b';
    expect(renderMarkdown(open)).toContain('<pre><code class="language-js">const a = &quot;x&quot;;\nlet b</code>');
    expect(renderMarkdown(open)).not.toContain('hljs');
    // As the stream goes on, every frame before the closing fence looks alike.
    expect(renderMarkdown(`${open} = 2;\n`)).not.toContain('hljs');
    expect(renderMarkdown(`${open} = 2;\n\`\``)).not.toContain('hljs');
    const closed = renderMarkdown(`${open} = 2;\n\`\`\`\n\nDone.`);
    expect(closed).toContain('<span class="hljs-keyword">const</span>');
    expect(closed).toContain('<p>Done.</p>');
  });

  test('fences closed in a list or a quote are highlighted; a longer opener needs a longer closer', async () => {
    await load('highlight');
    expect(renderMarkdown('- step\n  ```bash\n  ls -l\n  ```\n- next')).toContain('hljs');
    expect(renderMarkdown('> ```json\n> {"a": 1}\n> ```')).toContain('hljs');
    expect(renderMarkdown('````js\nlet a\n```')).not.toContain('hljs');
    expect(renderMarkdown('````js\nlet a\n```\n````')).toContain('hljs');
    expect(renderMarkdown('~~~go\nfunc main() {}\n~~~')).toContain('hljs');
  });

  test('a language it does not know, or none, shows plain', async () => {
    await load('highlight');
    expect(renderMarkdown('```brainfuck\n+[-->-[>>+>-----<<]<--<---]\n```')).not.toContain('hljs');
    expect(renderMarkdown('```\nplain\n```')).not.toContain('hljs');
    expect(renderMarkdown('    indented code')).not.toContain('hljs');
  });
});

describe('math', () => {
  test.each([
    ['$…$', 'Euler: $e^{i\\pi} + 1 = 0$.', false],
    ['\\(…\\)', 'Euler: \\(e^{i\\pi} + 1 = 0\\).', false],
    ['$$…$$', '$$\ne^{i\\pi} + 1 = 0\n$$', true],
    ['one-line $$…$$', '$$e^{i\\pi} + 1 = 0$$', true],
    ['\\[…\\]', '\\[\ne^{i\\pi} + 1 = 0\n\\]', true],
    ['one-line \\[…\\]', '\\[e^{i\\pi} + 1 = 0\\]', true],
  ])('%s renders with KaTeX', async (_, text, display) => {
    await load('math');
    const html = renderMarkdown(text);
    expect(html).toContain('class="katex"');
    expect(html).toContain('<annotation encoding="application/x-tex">e^{i\\pi} + 1 = 0');
    expect(html.includes('katex-display')).toBe(display);
    expect(html).not.toContain('math-source');
  });

  test('prices are not formulas', async () => {
    await load('math');
    expect(renderMarkdown('It costs $5, or $10 for two.')).toBe('<p>It costs $5, or $10 for two.</p>\n');
  });

  test('a formula in code is code', async () => {
    await load('math');
    expect(renderMarkdown('`$x$` and\n\n```\n$$y$$\n```')).not.toContain('katex');
  });

  test('an open formula is plain text until it closes', async () => {
    await load('math');
    expect(renderMarkdown('so $x^2 + y')).toBe('<p>so $x^2 + y</p>\n');
    expect(renderMarkdown('so \\(x^2 + y')).not.toContain('katex');
    expect(renderMarkdown('\\[\nx^2 +')).not.toContain('katex');
    // An open $$ block shows its source as it grows, not a half formula.
    for (const partial of ['$$', '$$\n', '$$\nx^2', '$$\nx^2 +\ny^2', '$$\nx^2 +\ny^2\n$']) {
      const html = renderMarkdown(`Here:\n\n${partial}`);
      expect(html).not.toContain('katex');
      expect(html).toContain('<div class="math-source">$$');
    }
    const closed = renderMarkdown('Here:\n\n$$\nx^2 +\ny^2\n$$');
    expect(closed).toContain('katex-display');
    expect(renderMarkdown('so $x^2 + y$')).toContain('class="katex"');
  });

  test.each([
    ['\\href', '\\href{javascript:alert(1)}{click}'],
    ['\\href to a web page', '\\href{https://evil.example}{click}'],
    ['\\url', '\\url{javascript:alert(1)}'],
    ['\\includegraphics', '\\includegraphics{https://tracker.example/p.png}'],
    ['\\htmlClass', '\\htmlClass{evil-class}{x}'],
    ['\\htmlId', '\\htmlId{evil-id}{x}'],
    ['\\htmlStyle', '\\htmlStyle{background:url(https://tracker.example/p.png)}{x}'],
    ['\\htmlData', '\\htmlData{evil=1}{x}'],
    ['\\color with CSS', '\\color{red;background:url(https://tracker.example/p.png)}{x}'],
    ['a macro that loops', '\\def\\a{\\a\\a}\\a'],
  ])('KaTeX renders %s inert', async (_, formula) => {
    await load('math');
    for (const text of [`$${formula}$`, `$$\n${formula}\n$$`, `\\(${formula}\\)`, `\\[${formula}\\]`]) {
      const html = renderMarkdown(text);
      expect(html).toMatch(/katex/);
      expectInert(html);
      expect(html).not.toMatch(/<a\b/);
      expect(html).not.toMatch(/\s(?:id|data-evil)="/);
      expect(html).not.toMatch(/class="[^"]*evil/);
      expect(html).not.toMatch(/style="[^"]*(background|url\()/);
    }
  });

  test('markup inside a formula is escaped', async () => {
    await load('math');
    const html = renderMarkdown('$<img src=x onerror=alert(1)>$ and $$\\text{<script>alert(1)</script>}$$');
    expectInert(html);
  });
});
