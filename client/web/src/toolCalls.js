// How a tool call's arguments read on its card.

/**
 * A call's arguments as shown: pretty-printed JSON once the call is whole (`complete`)
 * and its text parses, else the text as it came (a streaming call's is half a JSON).
 * Returns {text, json}: `json` true when pretty-printed.
 */
export function formatArguments(text, complete) {
  if (complete) {
    try {
      return { text: JSON.stringify(JSON.parse(text), null, 2), json: true };
    } catch {
      // Not JSON (some models write anything): show it as it is.
    }
  }
  return { text, json: false };
}
