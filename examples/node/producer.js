// A sluice producer in Node.js: enqueues --count tasks in batches, waiting
// for space when the queue is full (WAIT mode). Against a cluster,
// --broker lists its members and the batches go to the leader they name
// (see Members in sluice.js).
//
//   node producer.js --broker 127.0.0.1:50051 --queue jobs --count 100
const { options, Members } = require('./sluice');

const opts = options({ broker: '127.0.0.1:50051', queue: 'jobs', count: '10', prefix: 'task' });
const members = new Members(opts.broker);
const count = Number(opts.count);

function enqueue(tasks) {
  return new Promise((resolve, reject) => {
    members.svc.Enqueue({ queue: opts.queue, tasks, mode: 'ENQUEUE_MODE_WAIT' }, (err, res) =>
      err ? reject(err) : resolve(res));
  });
}

// Sends one batch, on the leader. A batch refused by a follower stored
// nothing; one whose leader died before answering may have been stored:
// at least once (an idempotency `key` per task makes the resend harmless).
async function enqueueOnLeader(tasks) {
  for (;;) {
    try {
      const res = await enqueue(tasks);
      members.ok();
      return res;
    } catch (err) {
      if (!(await members.retry(err))) throw err;
    }
  }
}

(async () => {
  let stored = 0;
  for (let start = 0; start < count; start += 50) {
    const tasks = [];
    for (let n = start; n < Math.min(start + 50, count); n++) {
      tasks.push({ payload: Buffer.from(`${opts.prefix}-${n}`) });
    }
    const res = await enqueueOnLeader(tasks);
    stored += res.ids.length;
  }
  console.log(`stored ${stored} tasks`);
  process.exit(0);
})().catch((err) => {
  console.error(`enqueue failed: ${err.message}`);
  process.exit(1);
});
