// Reference ThumbHash vectors for tests/test_thumbhash_reference.py: the images of
// tests/test_thumbhash_reference.py's `image()` (the same formula), hashed by Evan Wallace's
// reference encoder (js/thumbhash.js of github.com/evanw/thumbhash, commit a652ce6).
//   node thumbhash_vectors.mjs path/to/thumbhash.js > thumbhash_reference.json
import { pathToFileURL } from 'url';
import { createHash } from 'crypto';
const { rgbaToThumbHash } = await import(pathToFileURL(process.argv[2]).href);
const CASES = [[32, 24, false, 1], [24, 32, false, 2], [17, 9, false, 3], [32, 32, true, 4],
                      [20, 30, true, 5], [1, 1, false, 6], [100, 75, false, 7], [9, 100, true, 8]];
function image(w, h, alpha, seed) {
  const out = new Uint8Array(w * h * 4);
  let i = 0;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    out[i++] = (Math.floor(x * 255 / Math.max(1, w - 1)) + seed * 37) % 256;
    out[i++] = (Math.floor(y * 255 / Math.max(1, h - 1)) + seed * 11) % 256;
    out[i++] = Math.trunc(127.5 + 127.5 * Math.sin((x + 2 * y + seed) / 3.0));
    out[i++] = alpha ? (x * 7 + y * 13 + seed) % 256 : 255;
  }
  return out;
}
const vectors = CASES.map(([w, h, alpha, seed]) => ({
  width: w, height: h, alpha, seed,
  rgba_sha256: createHash('sha256').update(image(w, h, alpha, seed)).digest('hex'),
  thumbhash: Buffer.from(rgbaToThumbHash(w, h, image(w, h, alpha, seed))).toString('base64'),
}));
console.log(JSON.stringify({ source: 'evanw/thumbhash js/thumbhash.js at a652ce6', vectors }, null, 1));
