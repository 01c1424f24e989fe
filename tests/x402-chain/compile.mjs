// TEST ONLY: compiles MiniUSDC.sol with solc-js and prints {abi, deployedBytecode} as JSON on stdout.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import solc from 'solc';

const dir = path.dirname(fileURLToPath(import.meta.url));
const input = {
  language: 'Solidity',
  sources: { 'MiniUSDC.sol': { content: fs.readFileSync(path.join(dir, 'MiniUSDC.sol'), 'utf8') } },
  settings: { evmVersion: 'cancun', optimizer: { enabled: true, runs: 200 }, outputSelection: { '*': { '*': ['abi', 'evm.deployedBytecode.object'] } } },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors ?? []).filter((e) => e.severity === 'error');
if (errors.length > 0) {
  console.error(errors.map((e) => e.formattedMessage).join('\n'));
  process.exit(1);
}
const contract = output.contracts['MiniUSDC.sol'].MiniUSDC;
process.stdout.write(JSON.stringify({ abi: contract.abi, deployedBytecode: '0x' + contract.evm.deployedBytecode.object }));
