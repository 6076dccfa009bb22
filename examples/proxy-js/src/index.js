// Example script: a reverse proxy in front of the VPC Service bound as `API`, in JavaScript —
// what examples/proxy does in Rust.
//
// Every request is forwarded to http://api.internal<path>?<query> through the binding, with
// its method, headers and body (streamed); the service's response comes back as it is. When
// the service cannot be reached the answer is 502 with the body `ProxyError: <code>` (e.g.
// `ProxyError: connection_refused`). Each request is logged (`GET /hello -> 200`), which
// `wvpc dev` prints and `wvpc tail` follows.
//
// The URL's host does not choose the destination — the binding does (its service_id). It
// only becomes the Host header the origin sees.
const API_HOST = 'api.internal';

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const line = `${request.method} ${url.pathname}${url.search}`;
    try {
      const response = await env.API.fetch(`http://${API_HOST}${url.pathname}${url.search}`, {
        method: request.method,
        headers: request.headers,
        body: request.body,
        redirect: request.headers.get('x-redirect') === 'manual' ? 'manual' : 'follow',
      });
      console.log(`${line} -> ${response.status}`);
      return response;
    } catch (error) {
      console.log(`${line} -> 502 ${error.message}`);
      return new Response(error.message, {
        status: 502,
        headers: { 'content-type': 'text/plain; charset=utf-8' },
      });
    }
  },
};
