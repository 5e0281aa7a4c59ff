// One answer streamed through the Vercel AI SDK's default OpenAI provider, which
// speaks the Responses API: `node vercel_stream.mjs PROMPT`, with OPENAI_BASE_URL
// and OPENAI_API_KEY set. Prints {text, finishReason, outputTokens, id} as JSON;
// an error the SDK reports goes to stderr and the exit status is 1.
import { createRequire } from "node:module";

// The packages are the page's development dependencies (client/web).
const require = createRequire(new URL("../../client/web/package.json", import.meta.url));
const { streamText } = require("ai");
const { openai } = require("@ai-sdk/openai");

const result = streamText({
  model: openai("test-model"),
  prompt: process.argv[2],
  onError({ error }) {
    console.error(error);
    process.exitCode = 1;
  },
});
let text = "";
for await (const part of result.textStream) {
  text += part;
}
const usage = await result.usage;
const response = await result.response;
console.log(
  JSON.stringify({
    text,
    finishReason: await result.finishReason,
    outputTokens: usage.outputTokens,
    id: response.id,
  }),
);
