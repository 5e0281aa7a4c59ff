// The models the server offers (GET /v1/models, OpenAI's list shape; the first is its
// default) and the one this tab chose, kept in sessionStorage like the transcript.
const STORAGE_KEY = 'chatstream.model.v1';

/** The model ids in a /v1/models body, in order, without repeats; [] for anything else. */
export function parseModels(body) {
  if (!body || !Array.isArray(body.data)) return [];
  const ids = body.data.map((entry) => entry && entry.id).filter((id) => typeof id === 'string' && id !== '');
  return [...new Set(ids)];
}

/** The model to use: the tab's choice while the server still offers it, else its default. */
export function pickModel(models, chosen) {
  if (models.includes(chosen)) return chosen;
  return models[0] ?? null;
}

export async function fetchModels(signal) {
  const response = await fetch('/v1/models', { signal, headers: { Accept: 'application/json' } });
  if (!response.ok) throw new Error(`GET /v1/models: HTTP ${response.status}`);
  return parseModels(await response.json());
}

export function loadChosenModel() {
  try {
    return sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

export function saveChosenModel(model) {
  try {
    sessionStorage.setItem(STORAGE_KEY, model);
  } catch {
    // Storage disabled: the choice holds until a reload.
  }
}
