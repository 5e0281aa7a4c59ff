// Attached images: which files are taken, how big they may be, the parts they become in
// the `chat` payload, and what the tab's sessionStorage keeps of them (their description,
// never their data).
import { describe, expect, test } from 'vitest';
import {
  dataUrlLength,
  encodings,
  fitWithin,
  imageFilesOf,
  MAX_FILE_BYTES,
  MAX_IMAGE_BYTES,
  MAX_IMAGES,
  MAX_REQUEST_IMAGE_BYTES,
  MAX_SIDE,
  screenFiles,
  sendsAsIs,
} from './images.js';
import { applyEvents, assistantMessage, fromStored, historyOf, toStored, userMessage } from './streamState.js';

const PNG_1PX =
  'data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';

function image(id, url = PNG_1PX, fields = {}) {
  return { id, name: `${id}.png`, type: 'image/png', width: 1, height: 1, bytes: url.length, url, ...fields };
}

// A data URL of exactly `length` characters, as an image of that size would be.
function urlOfLength(length) {
  const head = 'data:image/jpeg;base64,';
  return head + 'A'.repeat(length - head.length);
}

const file = (name, type, size) => ({ name, type, size });
const reload = (messages) => fromStored(JSON.parse(JSON.stringify(toStored(messages))));

describe('the limits', () => {
  test('a data URL is the base64 of the bytes behind a short header', () => {
    const bytes = Buffer.from('a PNG of seventeen');
    const url = `data:image/png;base64,${bytes.toString('base64')}`;
    expect(dataUrlLength('image/png', bytes.length)).toBe(url.length);
  });

  test('the long side is brought down to MAX_SIDE, the shape kept; small images are untouched', () => {
    expect(MAX_SIDE).toBe(1568);
    expect(fitWithin(3136, 1000)).toEqual({ width: 1568, height: 500 });
    expect(fitWithin(1000, 4704)).toEqual({ width: 333, height: 1568 });
    expect(fitWithin(800, 600)).toEqual({ width: 800, height: 600 });
    expect(fitWithin(10_000, 1)).toEqual({ width: 1568, height: 1 });
  });

  test('a small common image goes byte for byte; anything else is re-encoded', () => {
    expect(sendsAsIs('image/png', 50_000, 800, 600)).toBe(true);
    expect(sendsAsIs('image/jpeg', 700_000, 1568, 1000)).toBe(true);
    expect(sendsAsIs('image/png', 50_000, 1569, 600)).toBe(false); // too long a side
    expect(sendsAsIs('image/png', 760_000, 800, 600)).toBe(false); // too many bytes
    expect(sendsAsIs('image/bmp', 5_000, 80, 60)).toBe(false); // not a type to send
    expect(sendsAsIs('image/svg+xml', 500, 80, 60)).toBe(false);
  });

  test('re-encoding tries PNG first except for photos, then JPEG at falling quality', () => {
    expect(encodings('image/png')[0]).toEqual(['image/png']);
    expect(encodings('image/webp').map(([type]) => type)).toEqual([
      'image/png',
      'image/jpeg',
      'image/jpeg',
      'image/jpeg',
    ]);
    const jpeg = encodings('image/jpeg');
    expect(jpeg.every(([type]) => type === 'image/jpeg')).toBe(true);
    const qualities = jpeg.map(([, quality]) => quality);
    expect(qualities).toEqual([...qualities].sort((a, b) => b - a));
  });

  test('a whole message of images fits in the request budget', () => {
    expect(MAX_IMAGES).toBe(4);
    expect(MAX_REQUEST_IMAGE_BYTES).toBeGreaterThanOrEqual(MAX_IMAGES * MAX_IMAGE_BYTES);
  });
});

describe('screening files', () => {
  test('images are taken up to MAX_IMAGES a message, counting those already held', () => {
    const files = [1, 2, 3].map((n) => file(`p${n}.png`, 'image/png', 1000));
    const { accepted, problems } = screenFiles(files, 2);
    expect(accepted.map((f) => f.name)).toEqual(['p1.png', 'p2.png']);
    expect(problems).toEqual([`A message takes at most ${MAX_IMAGES} images: 1 left out.`]);
  });

  test('a file that is not an image, or too big to decode, is refused by name', () => {
    const { accepted, problems } = screenFiles(
      [
        file('notes.txt', 'text/plain', 10),
        file('huge.png', 'image/png', MAX_FILE_BYTES + 1),
        file('ok.jpg', 'image/jpeg', 10),
        file('mystery', '', 10),
      ],
      0,
    );
    expect(accepted.map((f) => f.name)).toEqual(['ok.jpg']);
    expect(problems).toEqual([
      'notes.txt is not an image.',
      'huge.png is larger than 25 MB.',
      'mystery is not an image.',
    ]);
  });

  test('a paste or drop yields its image files only', () => {
    const files = [file('a.png', 'image/png', 1), file('b.txt', 'text/plain', 1)];
    expect(imageFilesOf({ files }).map((f) => f.name)).toEqual(['a.png']);
    expect(imageFilesOf({ files: [] })).toEqual([]);
    expect(imageFilesOf(null)).toEqual([]);
  });
});

describe('images in the chat payload', () => {
  test("a question with images becomes OpenAI's parts: the text, then each image's data URL", () => {
    const jpeg = urlOfLength(300);
    const m = [userMessage('u1', 'What is in these?', [image('i1'), image('i2', jpeg)]), assistantMessage('a1')];
    expect(historyOf(m)).toEqual([
      {
        role: 'user',
        content: [
          { type: 'text', text: 'What is in these?' },
          { type: 'image_url', image_url: { url: PNG_1PX } },
          { type: 'image_url', image_url: { url: jpeg } },
        ],
      },
    ]);
  });

  test('images without text: image parts only', () => {
    const m = [userMessage('u1', '', [image('i1')])];
    expect(historyOf(m)).toEqual([{ role: 'user', content: [{ type: 'image_url', image_url: { url: PNG_1PX } }] }]);
  });

  test('a question without images stays a string', () => {
    expect(userMessage('u1', 'hi')).toEqual({ id: 'u1', role: 'user', content: 'hi' });
    expect(historyOf([userMessage('u1', 'hi')])).toEqual([{ role: 'user', content: 'hi' }]);
  });

  test('images of earlier turns go again, newest first, until the request budget is spent', () => {
    const big = urlOfLength(MAX_IMAGE_BYTES);
    const done = { type: 'done', payload: { id: 'a1', finish_reason: 'stop' } };
    const turn = [userMessage('u1', 'first', [image('old', urlOfLength(1000))]), assistantMessage('a1')];
    let m = applyEvents(turn, [done]);
    m = [...m, userMessage('u2', 'second', [1, 2, 3, 4].map((n) => image(`new${n}`, big)))];
    const [first, second] = historyOf(m);
    // The four new images fill the budget: the older one is said, not sent.
    expect(first.content).toBe('first\n\n[1 image not resent]');
    expect(second.content.filter((part) => part.type === 'image_url')).toHaveLength(4);
    expect(JSON.stringify(historyOf(m)).length).toBeLessThan(MAX_REQUEST_IMAGE_BYTES + 1000);
    // With room, both go.
    m[2] = userMessage('u2', 'second', [image('small')]);
    expect(historyOf(m)[0].content).toHaveLength(2);
  });
});

describe('images and the tab’s sessionStorage', () => {
  test('stored: the description of each image, never its data', () => {
    const big = urlOfLength(MAX_IMAGE_BYTES);
    const m = [userMessage('u1', 'look', [image('i1', big, { width: 1568, height: 1000 })])];
    const stored = JSON.stringify(toStored(m));
    expect(stored).not.toContain('data:');
    expect(stored.length).toBeLessThan(300);
    expect(JSON.parse(stored)[0].images).toEqual([
      { id: 'i1', name: 'i1.png', type: 'image/png', width: 1568, height: 1000, bytes: MAX_IMAGE_BYTES },
    ]);
    // The transcript in memory still holds the image.
    expect(m[0].images[0].url).toBe(big);
  });

  test('after a reload: images not kept, and the history says so instead of sending them', () => {
    const reloaded = reload([userMessage('u1', 'look', [image('i1'), image('i2')])]);
    expect(reloaded[0].images.map((i) => [i.id, i.url])).toEqual([
      ['i1', undefined],
      ['i2', undefined],
    ]);
    expect(historyOf(reloaded)).toEqual([{ role: 'user', content: 'look\n\n[2 images not resent]' }]);
    const onlyImage = reload([userMessage('u1', '', [image('i1')])]);
    expect(historyOf(onlyImage)).toEqual([{ role: 'user', content: '[1 image not resent]' }]);
  });

  test('stored images are checked on the way back in; a url stored by mistake is dropped', () => {
    const reloaded = fromStored([
      {
        id: 'u1',
        role: 'user',
        content: 'x',
        images: [{ id: 'i1', url: PNG_1PX, width: 'wide', name: 7 }, null, 'junk', { type: 'image/png' }],
      },
      { id: 'u2', role: 'user', content: 'y', images: 'junk' },
    ]);
    expect(reloaded[0].images).toEqual([{ id: 'i1' }, { id: 'stored-1', type: 'image/png' }]);
    expect(reloaded[1]).toEqual({ id: 'u2', role: 'user', content: 'y' });
  });
});
