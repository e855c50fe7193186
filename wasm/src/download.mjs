// Resumable downloads for the browser worker (static/worker.mjs) and Node (remote.mjs).

/** Stream `url` (`total` bytes) into `sink(chunk)`, calling `onBytes(got, total)`; a broken
 * connection resumes where it stopped with an HTTP Range request, a few times (`onRetry(got)` is
 * told), and then fails with `fail(message, cause)`'s error. Browser and Node (fetch, streams). */
export async function download(url, total, sink, { onBytes = null, onRetry = null, fail = (m, e) => new Error(m, { cause: e }) } = {}) {
  let got = 0;
  for (let attempt = 0; ; attempt++) {
    let r;
    try {
      r = await fetch(url, got ? { headers: { range: `bytes=${got}-` } } : {});
    } catch (e) {
      if (attempt < 4) { await new Promise((res) => setTimeout(res, 500 * 2 ** attempt)); continue; }
      throw fail(`${url}: the download failed (${e.cause?.message || e.message}); try again`, e);
    }
    if (!r.ok) throw fail(`${url}: HTTP ${r.status}`);
    if (got && r.status !== 206) throw fail(`${url}: the server cannot resume a download (no Range support); try again`);
    const reader = r.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        sink(value);
        got += value.length;
        onBytes?.(got, total);
      }
    } catch (e) {
      if (attempt < 4) { onRetry?.(got); continue; }
      throw fail(`${url}: the download broke off at ${got} of ${total} bytes (${e.message}); try again`, e);
    }
    if (got !== total) throw fail(`${url}: got ${got} of ${total} bytes; try again`);
    return got;
  }
}
