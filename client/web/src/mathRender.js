// TeX to HTML with KaTeX, loaded on first need (see renderers.js), with its stylesheet.
// The formula is untrusted text:
// - trust: false refuses \href, \url, \includegraphics, \htmlClass, \htmlId, \htmlStyle
//   and \htmlData, which would put links, images, classes, ids, styles or data attributes
//   of the model's choosing in the page; KaTeX shows them as an unsupported command;
// - throwOnError: false shows a formula that does not parse as its (escaped) source;
// - maxExpand and maxSize bound what a macro loop or a huge \rule can cost.
import katex from 'katex';
import 'katex/dist/katex.min.css';

const OPTIONS = {
  throwOnError: false,
  trust: false,
  strict: 'ignore',
  maxExpand: 1000,
  maxSize: 50,
  output: 'htmlAndMathml',
};

export function renderMath(tex, displayMode) {
  return katex.renderToString(tex, { ...OPTIONS, displayMode });
}
