// A sluice producer in Node.js: enqueues --count tasks in batches, waiting
// for space when the queue is full (WAIT mode).
//
//   node producer.js --broker 127.0.0.1:50051 --queue jobs --count 100
const { client, options } = require('./sluice');

const opts = options({ broker: '127.0.0.1:50051', queue: 'jobs', count: '10', prefix: 'task' });
const svc = client(opts.broker);
const count = Number(opts.count);

function enqueue(tasks) {
  return new Promise((resolve, reject) => {
    svc.Enqueue({ queue: opts.queue, tasks, mode: 'ENQUEUE_MODE_WAIT' }, (err, res) =>
      err ? reject(err) : resolve(res));
  });
}

(async () => {
  let stored = 0;
  for (let start = 0; start < count; start += 50) {
    const tasks = [];
    for (let n = start; n < Math.min(start + 50, count); n++) {
      tasks.push({ payload: Buffer.from(`${opts.prefix}-${n}`) });
    }
    const res = await enqueue(tasks);
    stored += res.ids.length;
  }
  console.log(`stored ${stored} tasks`);
  process.exit(0);
})().catch((err) => {
  console.error(`enqueue failed: ${err.message}`);
  process.exit(1);
});
