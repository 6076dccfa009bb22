// Example script: raw TCP sockets through bindings with `env.X.connect()`, in JavaScript —
// what sdk/examples/sockets.rs does in Rust.
//
// - GET /redis?binding=B&addr=A&key=K&value=V speaks Redis (RESP) over a socket: PING,
//   SET K V, GET K; it answers one line per command (`PING +PONG`, `SET +OK`, `GET $V`).
// - POST /echo?binding=B&addr=A writes the request body, half-closes (the destination sees
//   FIN), and answers what the destination sent until it closed.
// A failure answers 502 with `ProxyError: <code>`.
//
// `addr` is `host:port` for a vpc_networks binding, and empty for a vpc_services binding (the
// service's tcp_port is dialled). Sockets are plaintext: TLS is the script's own business.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Reads RESP replies from a socket's readable stream.
class RespReader {
  constructor(readable) {
    this.reader = readable.getReader();
    this.buffered = new Uint8Array(0);
  }

  async fill() {
    const { value, done } = await this.reader.read();
    if (done) throw new Error('ProxyError: connection_terminated');
    const joined = new Uint8Array(this.buffered.length + value.length);
    joined.set(this.buffered);
    joined.set(value, this.buffered.length);
    this.buffered = joined;
  }

  async line() {
    for (;;) {
      const end = this.buffered.findIndex((b, i) => b === 13 && this.buffered[i + 1] === 10);
      if (end >= 0) {
        const text = decoder.decode(this.buffered.subarray(0, end));
        this.buffered = this.buffered.subarray(end + 2);
        return text;
      }
      await this.fill();
    }
  }

  // One reply, as its first line (with a bulk string's data after its `$`).
  async reply() {
    const head = await this.line();
    if (!head.startsWith('$') || head === '$-1') return head;
    const length = Number(head.slice(1));
    while (this.buffered.length < length + 2) await this.fill();
    const data = decoder.decode(this.buffered.subarray(0, length));
    this.buffered = this.buffered.subarray(length + 2);
    return `$${data}`;
  }
}

function command(...parts) {
  let text = `*${parts.length}\r\n`;
  for (const part of parts) text += `$${encoder.encode(part).length}\r\n${part}\r\n`;
  return encoder.encode(text);
}

async function redis(socket, key, value) {
  const writer = socket.writable.getWriter();
  const replies = new RespReader(socket.readable);
  let answer = '';
  await writer.write(command('PING'));
  answer += `PING ${await replies.reply()}\n`;
  await writer.write(command('SET', key, value));
  answer += `SET ${await replies.reply()}\n`;
  await writer.write(command('GET', key));
  answer += `GET ${await replies.reply()}\n`;
  await socket.close();
  return answer;
}

async function echo(socket, body) {
  const writer = socket.writable.getWriter();
  await writer.write(body);
  await writer.close();
  const answer = await new Response(socket.readable).arrayBuffer();
  await socket.close();
  return answer;
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const params = url.searchParams;
    const binding = env[params.get('binding')];
    try {
      if (!binding) throw new Error('ProxyError: proxy_configuration_error');
      const socket = binding.connect(params.get('addr') ?? '');
      await socket.opened;
      switch (url.pathname) {
        case '/redis':
          return new Response(await redis(socket, params.get('key') ?? 'key', params.get('value') ?? 'value'));
        case '/echo':
          return new Response(await echo(socket, new Uint8Array(await request.arrayBuffer())));
        default:
          await socket.close();
          return new Response('use /redis or /echo', { status: 404 });
      }
    } catch (error) {
      return new Response(error.message, { status: 502 });
    }
  },
};
