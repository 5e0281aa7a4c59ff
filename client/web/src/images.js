// Images attached to a question: screened, downscaled and re-encoded in the browser when
// they need it, and sent as data URLs in OpenAI's `image_url` parts. They live in memory
// only: the tab's sessionStorage copy keeps their description, never their data (see
// toStored in streamState.js).

/** Images one message may carry. */
export const MAX_IMAGES = 4;
/** The long side (px) an image is downscaled to: what vision models use at most. */
export const MAX_SIDE = 1568;
/** The longest data URL one image may be (characters: about 750 kB of image). */
export const MAX_IMAGE_BYTES = 1_000_000;
/** The data URLs one request may carry, over the whole history: older images drop out. */
export const MAX_REQUEST_IMAGE_BYTES = 4 * MAX_IMAGE_BYTES;
/** A file larger than this is not even decoded. */
export const MAX_FILE_BYTES = 25 * 1024 * 1024;
/** Types sent byte for byte when already small enough; anything else is re-encoded. */
export const SENT_AS_IS = ['image/png', 'image/jpeg', 'image/webp', 'image/gif'];
const JPEG_QUALITIES = [0.85, 0.7, 0.55];
// Each pass that still does not fit shrinks the image by this much, a few times at most.
const SHRINK = 0.75;
const SHRINK_PASSES = 4;

/** A file refused for a reason the composer says as it is. */
export class ImageProblem extends Error {}

/** The length of the base64 data URL of `bytes` bytes of `type`. */
export function dataUrlLength(type, bytes) {
  return `data:${type};base64,`.length + 4 * Math.ceil(bytes / 3);
}

/** `width` × `height` scaled down (never up) so that the long side is at most `maxSide`. */
export function fitWithin(width, height, maxSide = MAX_SIDE) {
  const long = Math.max(width, height);
  if (long <= maxSide) return { width, height };
  const scale = maxSide / long;
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) };
}

/** True when the file can go as it is: a common type, small enough on both counts. */
export function sendsAsIs(type, bytes, width, height) {
  return (
    SENT_AS_IS.includes(type) && Math.max(width, height) <= MAX_SIDE && dataUrlLength(type, bytes) <= MAX_IMAGE_BYTES
  );
}

/**
 * The encodings to try on the canvas, in order ([type, quality?]): PNG first for all but
 * photos (it keeps a screenshot's sharp text and any transparency), then JPEG at falling
 * quality until one fits.
 */
export function encodings(type) {
  const jpeg = JPEG_QUALITIES.map((quality) => ['image/jpeg', quality]);
  return type === 'image/jpeg' ? jpeg : [['image/png'], ...jpeg];
}

/**
 * Which `files` may be attached to a message that already holds (or is preparing)
 * `held` images: {accepted: File[], problems: string[]} (one sentence per refusal).
 */
export function screenFiles(files, held) {
  const accepted = [];
  const problems = [];
  let overCount = 0;
  for (const file of files) {
    if (!String(file.type).startsWith('image/')) problems.push(`${file.name} is not an image.`);
    else if (file.size > MAX_FILE_BYTES) {
      problems.push(`${file.name} is larger than ${MAX_FILE_BYTES / 1024 / 1024} MB.`);
    }
    else if (held + accepted.length >= MAX_IMAGES) overCount += 1;
    else accepted.push(file);
  }
  if (overCount > 0) {
    problems.push(`A message takes at most ${MAX_IMAGES} images: ${overCount} left out.`);
  }
  return { accepted, problems };
}

/** Image files among a paste's or a drop's `DataTransfer` (none for plain text). */
export function imageFilesOf(transfer) {
  return Array.from(transfer?.files ?? []).filter((file) => String(file.type).startsWith('image/'));
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// The bitmap drawn at `size` and encoded as each of `encodings` in turn: the first data
// URL that fits, or null.
function encodeFitting(bitmap, size, tries) {
  const canvas = document.createElement('canvas');
  canvas.width = size.width;
  canvas.height = size.height;
  const context = canvas.getContext('2d');
  let drawn; // the background the canvas holds the image on: none yet
  for (const [type, quality] of tries) {
    // JPEG has no transparency: what was transparent becomes white, not black.
    const background = type === 'image/jpeg' ? '#ffffff' : 'transparent';
    if (drawn !== background) {
      context.clearRect(0, 0, size.width, size.height);
      if (background !== 'transparent') {
        context.fillStyle = background;
        context.fillRect(0, 0, size.width, size.height);
      }
      context.drawImage(bitmap, 0, 0, size.width, size.height);
      drawn = background;
    }
    const url = canvas.toDataURL(type, quality);
    // A browser that cannot encode `type` gives PNG instead: try the next.
    if (url.startsWith(`data:${type};`) && url.length <= MAX_IMAGE_BYTES) return { url, type };
  }
  return null;
}

/**
 * A file as an attached image: {id, name, type, width, height, bytes, url}, `url` its
 * data URL, `bytes` that URL's length. A small PNG, JPEG, WebP or GIF goes as it is;
 * anything else is drawn on a canvas at most MAX_SIDE px long and re-encoded to fit
 * MAX_IMAGE_BYTES. Rejects when the browser cannot decode the file, or with an
 * ImageProblem when it does not fit.
 */
export async function prepareImage(file) {
  const bitmap = await createImageBitmap(file);
  try {
    const { width, height } = bitmap;
    const described = { id: crypto.randomUUID(), name: file.name || 'image' };
    if (sendsAsIs(file.type, file.size, width, height)) {
      const url = await readDataUrl(file);
      return { ...described, type: file.type, width, height, bytes: url.length, url };
    }
    let size = fitWithin(width, height);
    for (let pass = 0; pass < SHRINK_PASSES; pass += 1) {
      const encoded = encodeFitting(bitmap, size, encodings(file.type));
      if (encoded) return { ...described, ...encoded, ...size, bytes: encoded.url.length };
      size = fitWithin(size.width, size.height, Math.floor(Math.max(size.width, size.height) * SHRINK));
    }
    throw new ImageProblem(`${file.name} does not fit in ${MAX_IMAGE_BYTES / 1_000_000} MB, even downscaled.`);
  } finally {
    bitmap.close();
  }
}
