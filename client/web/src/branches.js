// A conversation's messages form a tree: each has a `parentId` (null for a root), and
// regenerating an answer or editing a question adds a sibling. The page shows one
// branch, from a root down to a leaf. Pure functions over a flat array of messages, in
// the order they were added (the server lists them oldest first; the page appends).

/** Each parent's children, in the order they were added: Map(parentId | null → [message]). */
export function childrenOf(messages) {
  const children = new Map();
  for (const message of messages) {
    const parent = message.parentId ?? null;
    const list = children.get(parent);
    if (list) list.push(message);
    else children.set(parent, [message]);
  }
  return children;
}

function byId(messages) {
  return new Map(messages.map((message) => [message.id, message]));
}

/**
 * The branch ending at `leafId`, root first; [] when there is no such message. A parent
 * not (yet) held ends the walk there: the branch shows what the page has.
 */
export function pathTo(messages, leafId) {
  if (leafId === null || leafId === undefined) return [];
  const index = byId(messages);
  const path = [];
  const seen = new Set();
  let message = index.get(leafId);
  while (message && !seen.has(message.id)) {
    seen.add(message.id);
    path.push(message);
    message = message.parentId == null ? undefined : index.get(message.parentId);
  }
  return path.reverse();
}

/**
 * The leaf a branch through `id` ends at: the message added last among `id` and all
 * that follow it (added last, it has no children yet, so it is a leaf), that is, where
 * the conversation below `id` was last taken.
 */
export function latestLeafBelow(messages, id) {
  const children = childrenOf(messages);
  const order = new Map(messages.map((message, index) => [message.id, index]));
  let latest = id;
  const stack = [id];
  const seen = new Set();
  while (stack.length > 0) {
    const current = stack.pop();
    if (seen.has(current)) continue;
    seen.add(current);
    if ((order.get(current) ?? -1) > (order.get(latest) ?? -1)) latest = current;
    for (const child of children.get(current) ?? []) stack.push(child.id);
  }
  return latest;
}

/** The leaf of the branch the page opens with: the message added last, or null. */
export function latestLeaf(messages) {
  return messages.length > 0 ? messages[messages.length - 1].id : null;
}

/** The messages that share `id`'s parent, `id`'s own included, in the order added. */
export function siblingsOf(messages, id) {
  const message = messages.find((m) => m.id === id);
  if (!message) return [];
  const parent = message.parentId ?? null;
  return messages.filter((m) => (m.parentId ?? null) === parent);
}

/**
 * Where each message of `path` stands among its siblings, for those that have some:
 * Map(id → {index, count}), `index` counted from 1.
 */
export function branchPositions(messages, path) {
  const children = childrenOf(messages);
  const positions = new Map();
  for (const message of path) {
    const siblings = children.get(message.parentId ?? null) ?? [];
    if (siblings.length > 1) {
      positions.set(message.id, { index: siblings.indexOf(message) + 1, count: siblings.length });
    }
  }
  return positions;
}

/**
 * The leaf to show after moving from `id` to its sibling `delta` places away (-1: the
 * previous one, 1: the next): the latest leaf below that sibling. null when there is no
 * sibling there.
 */
export function switchBranch(messages, id, delta) {
  const siblings = siblingsOf(messages, id);
  const at = siblings.findIndex((m) => m.id === id);
  const target = siblings[at + delta];
  if (at < 0 || !target) return null;
  return latestLeafBelow(messages, target.id);
}
