// The code highlighter and KaTeX are loaded on first need, not with the page: the first
// answer with a fenced language or a formula asks for them, and until they arrive (or
// if they fail to) that code shows plain and that formula as its source. Components
// subscribe to hear when one arrives and render again, once.
const LOADERS = {
  highlight: () => import('./codeHighlight.js'),
  math: () => import('./mathRender.js'),
};

const loaded = {};
const requested = {};
const listeners = new Set();
let version = 0;

/** The module named, once loaded; otherwise null, and its loading starts. */
export function renderer(name) {
  if (loaded[name]) return loaded[name];
  load(name);
  return null;
}

/** Starts loading a renderer (once); resolves when it is in, or has failed to load. */
export function load(name) {
  if (!requested[name]) {
    requested[name] = LOADERS[name]().then(
      (module) => {
        loaded[name] = module;
        version += 1;
        for (const listener of listeners) listener();
      },
      (error) => {
        // A chunk that fails to load (a deploy replaced it?) leaves the text plain; no
        // retry on every frame of a stream.
        console.warn(`chatstream: the ${name} renderer did not load`, error);
      },
    );
  }
  return requested[name];
}

/** For useSyncExternalStore: called when a renderer arrives. */
export function subscribe(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** Changes each time a renderer arrives: what rendered markdown depends on besides its text. */
export function renderersVersion() {
  return version;
}
