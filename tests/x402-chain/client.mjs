// TEST ONLY: the reference @x402/fetch client pays a URL unmodified. Env: URL, PAYER_KEY, BODY (JSON), TOKEN (optional).
// Prints one JSON line: {status, body, paymentResponse}.
import { wrapFetchWithPayment, decodePaymentResponseHeader, x402Client } from '@x402/fetch';
import { registerExactEvmScheme } from '@x402/evm/exact/client';
import { privateKeyToAccount } from 'viem/accounts';

const client = new x402Client();
registerExactEvmScheme(client, { signer: privateKeyToAccount(process.env.PAYER_KEY) });
const pay = wrapFetchWithPayment(fetch, client);
const headers = { 'content-type': 'application/json' };
if (process.env.TOKEN) headers.authorization = `Bearer ${process.env.TOKEN}`;
const response = await pay(process.env.URL, { method: 'POST', headers, body: process.env.BODY ?? '{"prompt":"hello"}' });
const header = response.headers.get('PAYMENT-RESPONSE') ?? response.headers.get('X-PAYMENT-RESPONSE');
const text = await response.text();
let body;
try { body = JSON.parse(text); } catch { body = text; }
console.log(JSON.stringify({ status: response.status, body, paymentResponse: header ? decodePaymentResponseHeader(header) : null }));
