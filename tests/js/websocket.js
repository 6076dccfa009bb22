// Test script: what sdk/examples/websocket.rs does, in JavaScript. `GET /echo/<text>` opens
// http://api.internal/ws with `Upgrade: websocket` through `API`, sends <text> as one masked
// text frame and a close frame, and once the origin answered 101 reads the origin's frames
// from the response body: `200 echo: <text>`, else `502 <why>`.

function clientFrame(opcode, payload) {
  const mask = [0x37, 0xfa, 0x21, 0x3d];
  const frame = [0x80 | opcode, 0x80 | payload.length, ...mask];
  payload.forEach((b, i) => frame.push(b ^ mask[i % 4]));
  return frame;
}

function serverFrames(bytes) {
  const frames = [];
  let at = 0;
  while (at + 2 <= bytes.length) {
    const length = bytes[at + 1] & 0x7f;
    if (at + 2 + length > bytes.length) break;
    frames.push([bytes[at] & 0x0f, bytes.subarray(at + 2, at + 2 + length)]);
    at += 2 + length;
  }
  return frames;
}

export default {
  async fetch(request, env) {
    const text = new URL(request.url).pathname.replace(/^\/echo\//, '');
    const frames = new Uint8Array([
      ...clientFrame(0x1, [...new TextEncoder().encode(text)]),
      ...clientFrame(0x8, [0x03, 0xe8]),
    ]);
    let response;
    try {
      response = await env.API.fetch('http://api.internal/ws', {
        method: 'GET',
        headers: {
          connection: 'Upgrade',
          upgrade: 'websocket',
          'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
          'sec-websocket-version': '13',
        },
        body: frames,
      });
    } catch (error) {
      return new Response(error.message, { status: 502 });
    }
    if (response.status !== 101) return new Response(`no upgrade: ${response.status}`, { status: 502 });
    const received = new Uint8Array(await response.arrayBuffer());
    const textFrame = serverFrames(received).find(([op]) => op === 0x1);
    if (!textFrame) return new Response(`the origin sent no text frame (${received.length} bytes)`, { status: 502 });
    return new Response(`echo: ${new TextDecoder().decode(textFrame[1])}`);
  },
};
