// Chat Completions options for every question from this tab, read from the page's
// `?options=` query: a JSON object (`tools`, `tool_choice`, `temperature`, …) sent as the
// `chat` event's `options`, which the server passes upstream. For developers: the page
// has no form for them, and shows which ones are in force.

/** {options: object | null, problem: string | null} from a location's `search`. */
export function optionsFromQuery(search) {
  const raw = new URLSearchParams(search).get('options');
  if (raw === null || raw.trim() === '') return { options: null, problem: null };
  try {
    const value = JSON.parse(raw);
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      return { options: Object.keys(value).length > 0 ? value : null, problem: null };
    }
  } catch {
    // Reported below like any other value that is not an object.
  }
  return { options: null, problem: 'The ?options= query is not a JSON object: ignored.' };
}
