// TEST ONLY: a tiny HTTP wrapper around the reference @x402/core facilitator with the @x402/evm exact scheme,
// settling on a local anvil chain. Env: PORT, RPC_URL, FACILITATOR_KEY. Prints "listening <port>" when ready.
import http from 'node:http';
import { x402Facilitator } from '@x402/core/facilitator';
import { registerExactEvmScheme } from '@x402/evm/exact/facilitator';
import { toFacilitatorEvmSigner } from '@x402/evm';
import { createWalletClient, http as httpTransport, publicActions } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { baseSepolia } from 'viem/chains';

const account = privateKeyToAccount(process.env.FACILITATOR_KEY);
const client = createWalletClient({ account, chain: baseSepolia, transport: httpTransport(process.env.RPC_URL) }).extend(publicActions);
const signer = toFacilitatorEvmSigner({ ...client, address: account.address });
const facilitator = new x402Facilitator();
registerExactEvmScheme(facilitator, { signer, networks: 'eip155:84532' });

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body, (_, v) => (typeof v === 'bigint' ? v.toString() : v)));
}

const server = http.createServer(async (req, res) => {
  try {
    if (req.method === 'GET' && req.url === '/supported') {
      return send(res, 200, facilitator.getSupported());
    }
    if (req.method === 'POST' && (req.url === '/verify' || req.url === '/settle')) {
      let text = '';
      for await (const chunk of req) text += chunk;
      const body = JSON.parse(text);
      const result = req.url === '/verify'
        ? await facilitator.verify(body.paymentPayload, body.paymentRequirements)
        : await facilitator.settle(body.paymentPayload, body.paymentRequirements);
      return send(res, 200, result);
    }
    send(res, 404, { error: 'not_found' });
  } catch (err) {
    send(res, 500, { error: 'unexpected_error', detail: String(err?.message ?? err) });
  }
});
server.listen(Number(process.env.PORT), '127.0.0.1', () => console.log(`listening ${server.address().port}`));
