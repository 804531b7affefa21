// Loads sluice's API from proto/ at run time (no generated code).
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'sluice', 'v1', 'sluice.proto');

function client(broker) {
  const def = protoLoader.loadSync(PROTO, {
    keepCase: true, // field names as in the .proto
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const { sluice } = grpc.loadPackageDefinition(def);
  return new sluice.v1.SluiceService(broker, grpc.credentials.createInsecure());
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

module.exports = { client, options };
