// A sluice worker in Node.js, following docs/protocol.md: one credit per
// free slot, ack (with a result) plus one credit per finished task, nack on
// failure, lease extension, and a clean stop on SIGTERM.
//
//   node worker.js --broker 127.0.0.1:50051 --queue jobs --concurrency 4
const fs = require('fs');
const { client, options } = require('./sluice');

const opts = options({ broker: '127.0.0.1:50051', queue: 'jobs', concurrency: '1', name: `node-${process.pid}`, log: '' });
const concurrency = Number(opts.concurrency);
const svc = client(opts.broker);
const call = svc.Consume();

const held = new Map(); // task id -> attempt
let credit = concurrency;
let maxHeld = 0;
let stopping = false;
let stopped = false;
let ackDeadlineMs = 30000;
let extender = null;

const lease = (id, attempt) => ({ task_id: id, attempt });

function maybeFinish() {
  if (stopping && stopped && held.size === 0) {
    clearInterval(extender);
    call.end(); // half-close: the broker ends the stream after our acks
  }
}

async function handle(d) {
  const payload = d.task.payload.toString();
  // The work: a stand-in to replace.
  const result = Buffer.from(payload.toUpperCase());
  if (opts.log) fs.appendFileSync(opts.log, `${payload}\n`);
  held.delete(d.task.id);
  const frame = { acks: [{ lease: lease(d.task.id, d.attempt), result }] };
  if (!stopping) {
    frame.credit = 1;
    credit += 1;
  }
  call.write(frame);
  maybeFinish();
}

call.on('data', (resp) => {
  if (resp.subscribed) {
    ackDeadlineMs = Math.max(Number(resp.subscribed.ack_deadline_ms), 300);
    extender = setInterval(() => {
      if (held.size > 0) {
        call.write({ extends: [...held].map(([id, attempt]) => ({ lease: lease(id, attempt) })) });
      }
    }, ackDeadlineMs / 3);
  }
  for (const d of resp.deliveries) {
    held.set(d.task.id, d.attempt);
    credit -= 1;
    maxHeld = Math.max(maxHeld, held.size);
    if (held.size > concurrency || credit < 0) {
      console.error(`BUG: holding ${held.size} tasks with credit for ${concurrency}`);
      process.exit(3);
    }
    setImmediate(() => handle(d));
  }
  for (const e of resp.errors) console.error(`broker refused ${e.lease.task_id}: ${e.message}`);
  if (resp.stopped) {
    stopped = true;
    maybeFinish();
  }
  if (resp.drain) stop();
});
call.on('error', (err) => {
  if (!stopping) {
    console.error(`stream failed: ${err.message}`);
    process.exit(1);
  }
});
call.on('end', () => {
  console.error(`stopped; max held ${maxHeld}`);
  process.exit(0);
});

function stop() {
  if (stopping) return;
  stopping = true;
  call.write({ stop: true });
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

call.write({ subscribe: { queue: opts.queue, consumer_name: opts.name }, credit: concurrency });
