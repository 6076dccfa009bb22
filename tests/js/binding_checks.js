// Test script: what sdk/examples/binding_checks.rs does, in JavaScript. `GET
// /<scheme>/<host>/<rest>` fetches `<scheme>://<host>/<rest>` through `API` and reads the
// whole body; it answers the origin's status and body, or 502 with the error's message
// (`ProxyError: <code>`).
export default {
  async fetch(request, env) {
    const [scheme, host, ...rest] = new URL(request.url).pathname.slice(1).split('/');
    if (!scheme || !host) return new Response('use /<scheme>/<host>/<rest>', { status: 400 });
    try {
      const response = await env.API.fetch(`${scheme}://${host}/${rest.join('/')}`);
      return new Response(await response.arrayBuffer(), { status: response.status });
    } catch (error) {
      return new Response(error.message, { status: 502 });
    }
  },
};
