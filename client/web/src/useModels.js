// The model chooser's state: the list is asked for each time the socket connects (a
// restarted server may offer others), and the tab's choice is remembered for the tab.
import { useCallback, useEffect, useState } from 'react';
import { fetchModels, loadChosenModel, pickModel, saveChosenModel } from './models.js';

export function useModels(connected) {
  const [models, setModels] = useState([]);
  const [chosen, setChosen] = useState(loadChosenModel);

  useEffect(() => {
    if (!connected) return undefined;
    const request = new AbortController();
    fetchModels(request.signal)
      .then(setModels)
      .catch(() => {
        // No list (an older server, or the request failed): the server's default is used.
      });
    return () => request.abort();
  }, [connected]);

  const choose = useCallback((model) => {
    setChosen(model);
    saveChosenModel(model);
  }, []);

  return { models, model: pickModel(models, chosen), choose };
}
