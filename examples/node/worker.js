// A sluice worker in Node.js, following docs/protocol.md: one credit per
// free slot, ack (with a result) plus one credit per finished task, nack on
// failure, lease extension, and a clean stop on SIGTERM. When the stream
// breaks (the broker went away, or a cluster's leader changed) it
// subscribes again, to the leader if --broker lists a cluster's members
// (see Members in sluice.js).
//
//   node worker.js --broker 127.0.0.1:50051 --queue jobs --concurrency 4
const fs = require('fs');
const { options, Members } = require('./sluice');

const opts = options({ broker: '127.0.0.1:50051', queue: 'jobs', concurrency: '1', name: `node-${process.pid}`, log: '' });
const concurrency = Number(opts.concurrency);
const members = new Members(opts.broker);

// The current stream: its call, and the leases it holds (task id ->
// attempt). Leases end with their stream: the broker hands those tasks out
// again.
let stream = null;
let busy = 0; // tasks running, from any stream
let credit = 0; // granted on the current stream and unspent
let maxHeld = 0;
let stopping = false;
let stopped = false;
let ackDeadlineMs = 30000;
let extender = null;

const lease = (id, attempt) => ({ task_id: id, attempt });

function maybeFinish() {
  if (stopping && stopped && busy === 0) {
    clearInterval(extender);
    stream.call.end(); // half-close: the broker ends the stream after our acks
  }
}

async function handle(s, d) {
  const payload = d.task.payload.toString();
  // The work: a stand-in to replace.
  const result = Buffer.from(payload.toUpperCase());
  if (opts.log) fs.appendFileSync(opts.log, `${payload}\n`);
  busy -= 1;
  s.held.delete(d.task.id);
  // If its stream broke, the lease is gone: only the slot is free.
  const frame = s === stream ? { acks: [{ lease: lease(d.task.id, d.attempt), result }] } : {};
  if (!stopping) {
    frame.credit = 1;
    credit += 1;
  }
  if (Object.keys(frame).length > 0) stream.call.write(frame);
  maybeFinish();
}

function onData(s, resp) {
  if (resp.subscribed) {
    members.ok();
    ackDeadlineMs = Math.max(Number(resp.subscribed.ack_deadline_ms), 300);
    extender = extender || setInterval(() => {
      if (stream.held.size > 0) {
        stream.call.write({ extends: [...stream.held].map(([id, attempt]) => ({ lease: lease(id, attempt) })) });
      }
    }, ackDeadlineMs / 3);
  }
  for (const d of resp.deliveries) {
    s.held.set(d.task.id, d.attempt);
    busy += 1;
    credit -= 1;
    maxHeld = Math.max(maxHeld, busy);
    if (busy > concurrency || credit < 0) {
      console.error(`BUG: holding ${busy} tasks with credit for ${concurrency}`);
      process.exit(3);
    }
    setImmediate(() => handle(s, d));
  }
  for (const e of resp.errors) console.error(`broker refused ${e.lease.task_id}: ${e.message}`);
  if (resp.stopped) {
    stopped = true;
    maybeFinish();
  }
  if (resp.drain) stop();
}

// Opens a stream and subscribes with one credit per free slot: slots still
// busy with tasks of a broken stream stay taken until those finish (each
// then grants its credit on this stream).
function subscribe() {
  const s = { call: members.svc.Consume(), held: new Map(), broken: false };
  stream = s;
  s.call.on('data', (resp) => onData(s, resp));
  s.call.on('error', async (err) => {
    s.broken = true;
    if (stopping) return;
    // Refused by a follower, or the stream broke: to the leader, or the
    // next member (see Members in sluice.js).
    if (await members.retry(err)) {
      subscribe();
    } else {
      console.error(`stream failed: ${err.message}`);
      process.exit(1);
    }
  });
  s.call.on('end', () => {
    if (s.broken && !stopping) return; // 'error' reconnects
    console.error(`stopped; max held ${maxHeld}`);
    process.exit(0);
  });
  credit = stopping ? 0 : concurrency - busy;
  s.call.write({ subscribe: { queue: opts.queue, consumer_name: opts.name }, credit });
  if (stopping) s.call.write({ stop: true }); // SIGTERM came while reconnecting
}

function stop() {
  if (stopping) return;
  stopping = true;
  stream.call.write({ stop: true });
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

subscribe();
