// A testbed service for bench/accuracy.py on Node.js (no OpenTelemetry: only the kernel sees it): a plain
// http server whose handler makes 1 to 3 concurrent downstream calls per request (by the request's rid) on a
// keep-alive agent, then answers. It records each request in its oracle file as accuracy_service.py does.
//
//   node accuracy_node.js --name NAME --oracle FILE --port PORT --call URL [--call URL ...]
'use strict';
const fs = require('fs');
const http = require('http');
const crypto = require('crypto');

const args = { call: [] };
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, '');
  if (key === 'call') args.call.push(process.argv[i + 1]);
  else args[key] = process.argv[i + 1];
}
const agent = new http.Agent({ keepAlive: true });
const oracle = fs.openSync(args.oracle, 'a');
const newRid = () => crypto.randomBytes(8).toString('hex');

function calls(rid) {
  // 1 to 3, fixed by the rid, as the aiohttp service does it
  return 1 + (crypto.createHash('sha1').update(rid).digest()[0] % 3);
}

function get(url, rid, trace) {
  return new Promise((resolve, reject) => {
    const req = http.get(`${url}?rid=${newRid()}&prid=${rid}&trace=${trace}`, { agent }, (res) => {
      res.resume();
      res.on('end', resolve);
    });
    req.on('error', reject);
  });
}

const server = http.createServer((req, res) => {
  const q = new URL(req.url, 'http://x').searchParams;
  const rid = q.get('rid') || newRid();
  const trace = q.get('trace') || rid;
  fs.writeSync(oracle, JSON.stringify({
    rid, parent_rid: q.get('prid'), trace, service: args.name, ts: Date.now() * 1e6, pid: process.pid,
    ctx: 'traceparent' in req.headers, mqtt: null, sdk_trace: null,
  }) + '\n');
  const n = calls(rid);
  Promise.all(Array.from({ length: n }, (_, i) => get(args.call[i % args.call.length], rid, trace)))
    .then(() => { res.writeHead(200, { 'Content-Length': 2 }); res.end('ok'); })
    .catch((e) => { res.writeHead(502); res.end(String(e)); });
});
server.keepAliveTimeout = 60000;
server.listen(Number(args.port), '127.0.0.1', () => process.stdout.write('ready\n'));
process.on('SIGTERM', () => process.exit(0));
