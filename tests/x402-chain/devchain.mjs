// TEST ONLY: readies a local anvil chain (--chain-id 84532) for the launch gate's on-chain x402 step (scripts/ci-gate.sh).
// Places MiniUSDC at the Base Sepolia USDC address (anvil_setCode), makes a fresh wallet with gas (anvil_setBalance) and
// USDC (a mint the wallet sends itself, waited for), and a fresh payTo address for freeside. Prints KEY=VALUE lines.
// Env: RPC_URL (required), USDC (atomic units to mint, default 10000000 = 10 USDC).
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPublicClient, createTestClient, createWalletClient, http, parseAbi } from 'viem';
import { generatePrivateKey, privateKeyToAccount } from 'viem/accounts';
import { baseSepolia } from 'viem/chains';

const USDC_ADDRESS = '0x036CbD53842c5426634e7929541eC2318f3dCF7e';
const rpcUrl = process.env.RPC_URL;
if (!rpcUrl) {
  console.error('RPC_URL is required');
  process.exit(2);
}
const amount = BigInt(process.env.USDC ?? '10000000');
const dir = path.dirname(fileURLToPath(import.meta.url));
const abi = parseAbi(['function mint(address to, uint256 value)', 'function balanceOf(address) view returns (uint256)']);

const transport = http(rpcUrl);
const chainId = await createPublicClient({ transport }).getChainId();
if (chainId !== baseSepolia.id) {
  console.error(`expected chain id ${baseSepolia.id} (anvil --chain-id 84532), got ${chainId}`);
  process.exit(1);
}

const { deployedBytecode } = JSON.parse(execFileSync(process.execPath, [path.join(dir, 'compile.mjs')], { encoding: 'utf8' }));
const test = createTestClient({ chain: baseSepolia, mode: 'anvil', transport });
await test.setCode({ address: USDC_ADDRESS, bytecode: deployedBytecode });

const key = generatePrivateKey();
const wallet = privateKeyToAccount(key);
await test.setBalance({ address: wallet.address, value: 10n ** 18n });
const client = createWalletClient({ account: wallet, chain: baseSepolia, transport });
const publicClient = createPublicClient({ chain: baseSepolia, transport });
const hash = await client.writeContract({ address: USDC_ADDRESS, abi, functionName: 'mint', args: [wallet.address, amount] });
const receipt = await publicClient.waitForTransactionReceipt({ hash });
const balance = await publicClient.readContract({ address: USDC_ADDRESS, abi, functionName: 'balanceOf', args: [wallet.address] });
if (receipt.status !== 'success' || balance !== amount) {
  console.error(`mint failed: status ${receipt.status}, balance ${balance}`);
  process.exit(1);
}

const payTo = privateKeyToAccount(generatePrivateKey()).address;
console.error(`devchain: token at ${USDC_ADDRESS}, wallet ${wallet.address} holds 1 ETH + ${amount} USDC units, payTo ${payTo}`);
console.log(`STAGING_WALLET_KEY=${key}`);
console.log(`WALLET_ADDRESS=${wallet.address}`);
console.log(`PAY_TO=${payTo}`);
