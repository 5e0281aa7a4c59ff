import { memo } from 'react';

/** Which model answers the next question; not shown when the server offers only one. */
function ModelChooser({ models, value, onChange }) {
  if (models.length < 2) return null;
  return (
    <label className="model-chooser">
      <span className="visually-hidden">Model</span>
      <select value={value ?? ''} onChange={(event) => onChange(event.target.value)} data-testid="model-chooser">
        {models.map((model) => (
          <option key={model} value={model}>
            {model}
          </option>
        ))}
      </select>
    </label>
  );
}

export default memo(ModelChooser);
