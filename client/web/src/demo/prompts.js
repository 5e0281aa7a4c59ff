// Varied prompts, one per pane, so every pane's answer is recognisably its own.
export const PROMPTS = [
  'Explain how a Socket.IO room differs from a namespace.',
  'Write a table of five HTTP status codes and their meanings.',
  'Show a python code block that counts words in a file.',
  'Summarise the plot of Hamlet in three bullet points.',
  'Explain why the sky is blue, briefly.',
  'Write a haiku about streaming tokens.',
  'Show a JavaScript code block that debounces a function.',
  'List four tips for writing readable SQL.',
  'Explain the difference between TCP and UDP.',
  'Write a table comparing lemons, limes and oranges.',
  'Describe a good morning routine for a programmer.',
  'Show a bash code block that finds the ten largest files.',
];
