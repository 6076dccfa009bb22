// A worker as a workers-vpc script writes it: a service binding's fetch, a network binding's
// connect, the ProxyError codes and waitUntil.

import type { ProxyError, ProxyErrorCode, SocketInfo } from "@workers-vpc/types";

function isProxyError(error: unknown): error is ProxyError {
  return error instanceof Error && error.message.startsWith("ProxyError: ");
}

async function ping(env: Env): Promise<string> {
  const socket = env.NET.connect({ hostname: "redis.internal", port: 6379 }, { secureTransport: "off" });
  const info: SocketInfo = await socket.opened;
  const writer = socket.writable.getWriter();
  await writer.write(new TextEncoder().encode("PING\r\n"));
  await writer.close();
  const reader = socket.readable.getReader();
  const { value } = await reader.read();
  await socket.close();
  await socket.closed;
  return `${info.remoteAddress}: ${new TextDecoder().decode(value)}`;
}

export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname === "/ping") {
      return new Response(await ping(env));
    }
    const raw = env.NET.connect("10.0.0.7:80");
    ctx.waitUntil(raw.close());
    try {
      return await env.API.fetch(`http://api.internal${url.pathname}${url.search}`, {
        method: request.method,
        headers: request.headers,
        body: request.body,
      });
    } catch (error) {
      if (isProxyError(error)) {
        const code: ProxyErrorCode = error.code;
        const status = code === "destination_not_found" ? 404 : 502;
        return new Response(error.message, { status });
      }
      throw error;
    }
  },
} satisfies ExportedHandler<Env>;
