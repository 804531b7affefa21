// Loads sluice's API from proto/ at run time (no generated code), and
// finds a cluster's leader.
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'sluice', 'v1', 'sluice.proto');

let api = null;

function client(broker) {
  if (!api) {
    const def = protoLoader.loadSync(PROTO, {
      keepCase: true, // field names as in the .proto
      longs: Number,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    api = grpc.loadPackageDefinition(def).sluice.v1;
  }
  return new api.SluiceService(broker, grpc.credentials.createInsecure());
}

// In a cluster only the leader serves the calls of SluiceService (every
// member answers GetBrokerInfo). Any other member answers UNAVAILABLE and
// names the leader in the metadata `sluice-leader`: its URL,
// `http://HOST:PORT`, or '' while it knows of none (during an election).
// The refused call ran nowhere, so it is safe to make again. So, given the
// members' addresses (--broker a:1,b:2,...): call the first; on
// UNAVAILABLE naming a leader, call the leader at once; naming none, or
// from a member that cannot be reached, call the next member after a
// short pause; give up after 30 s of that. A lone broker never names a
// leader: the same code works against it.
const LEADER_METADATA = 'sluice-leader';

// A grpc target from a broker URL: `http://h:p` -> `h:p`.
const target = (url) => url.trim().replace(/^http:\/\//, '');

class Members {
  constructor(broker, giveUpMs = 30000) {
    this.addrs = broker.split(',').map(target).filter(Boolean);
    this.next = 0; // the member to try when no leader is named
    this.giveUpMs = giveUpMs;
    this.failingSince = null;
    this.pauseMs = 100;
    this.addr = null;
    this.svc = null; // the client calls go to now
    this.go(this.nextMember());
  }

  // The next member in the list, other than this one if it can.
  nextMember() {
    let addr;
    for (let i = 0; i < this.addrs.length; i++) {
      addr = this.addrs[this.next];
      this.next = (this.next + 1) % this.addrs.length;
      if (addr !== this.addr) break;
    }
    return addr;
  }

  go(addr) {
    if (this.svc) this.svc.close();
    this.addr = addr;
    this.svc = client(addr);
  }

  // A call succeeded: the next failure starts a new count.
  ok() {
    this.failingSince = null;
    this.pauseMs = 100;
  }

  // After a call failed with `err`, moves `this.svc` to where it should be
  // made again; resolves false if it should not be.
  async retry(err) {
    if (err.code !== grpc.status.UNAVAILABLE) return false; // a real answer
    const now = Date.now();
    this.failingSince = this.failingSince || now;
    if (now - this.failingSince > this.giveUpMs) return false;
    const leader = target(String((err.metadata && err.metadata.get(LEADER_METADATA)[0]) || ''));
    if (leader && leader !== this.addr) {
      console.error(`${this.addr} is not the leader; going to ${leader}`);
      this.go(leader);
      return true;
    }
    // No leader known yet, or this member is down: try the next one.
    const addr = this.nextMember();
    console.error(`${this.addr}: ${err.details}; trying ${addr} in ${this.pauseMs / 1000}s`);
    await new Promise((resolve) => setTimeout(resolve, this.pauseMs));
    this.pauseMs = Math.min(this.pauseMs * 2, 2000);
    this.go(addr);
    return true;
  }
}

// "--name value" command-line options, with defaults.
function options(defaults) {
  const out = { ...defaults };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    out[argv[i].replace(/^--/, '')] = argv[i + 1];
  }
  return out;
}

module.exports = { client, options, Members, LEADER_METADATA };
