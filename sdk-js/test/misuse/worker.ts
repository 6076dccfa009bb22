// Each marked line is a mistake the types must catch; nothing else may fail.
export default {
  async fetch(request, env, ctx) {
    // TLS sockets do not exist on workers-vpc.
    const socket = env.NET.connect("db.internal:5432", { secureTransport: "on" }); // error TS2322
    ctx.waitUntil(socket.close());
    // A binding that wrangler.jsonc does not declare.
    await env.CACHE.fetch(request); // error TS2339
    try {
      return await env.API.fetch(request);
    } catch (error) {
      // A misspelt code.
      if ((error as ProxyError).code === "connection_refusd") { // error TS2367
        return new Response("down", { status: 503 });
      }
      throw error;
    }
  },
} satisfies ExportedHandler<Env>;

// A handler without fetch: the build refuses it.
export const empty = {} satisfies ExportedHandler<Env>; // error TS1360
