import { describe, expect, test } from 'vitest';
import {
  branchPositions,
  childrenOf,
  latestLeaf,
  latestLeafBelow,
  pathTo,
  siblingsOf,
  switchBranch,
} from './branches.js';

const m = (id, parentId, role = 'user') => ({ id, parentId, role });

// In the order added:
//   u1 ─ a1 ─ u2 ─ a2          the first branch
//      └ a1b                   a1 regenerated, after a2
//   u1e ─ a3                   u1 edited (a new root), last
const TREE = [
  m('u1', null),
  m('a1', 'u1', 'assistant'),
  m('u2', 'a1'),
  m('a2', 'u2', 'assistant'),
  m('a1b', 'u1', 'assistant'),
  m('u1e', null),
  m('a3', 'u1e', 'assistant'),
];
const ids = (messages) => messages.map((message) => message.id);

describe('the tree', () => {
  test('children of each parent, in the order added; roots under null', () => {
    const children = childrenOf(TREE);
    expect(ids(children.get(null))).toEqual(['u1', 'u1e']);
    expect(ids(children.get('u1'))).toEqual(['a1', 'a1b']);
    expect(ids(children.get('u2'))).toEqual(['a2']);
    expect(children.has('a2')).toBe(false);
  });

  test('the branch to a leaf runs from its root', () => {
    expect(ids(pathTo(TREE, 'a2'))).toEqual(['u1', 'a1', 'u2', 'a2']);
    expect(ids(pathTo(TREE, 'a1b'))).toEqual(['u1', 'a1b']);
    expect(ids(pathTo(TREE, 'a3'))).toEqual(['u1e', 'a3']);
    expect(pathTo(TREE, 'nope')).toEqual([]);
    expect(pathTo(TREE, null)).toEqual([]);
  });

  test('a parent the page does not hold ends the branch there; a cycle ends too', () => {
    expect(ids(pathTo([m('u9', 'gone'), m('a9', 'u9', 'assistant')], 'a9'))).toEqual(['u9', 'a9']);
    expect(ids(pathTo([m('x', 'y'), m('y', 'x')], 'x'))).toEqual(['y', 'x']);
  });

  test('the latest leaf below a message: where that part of the tree was last taken', () => {
    expect(latestLeafBelow(TREE, 'u1')).toBe('a1b');
    expect(latestLeafBelow(TREE, 'a1')).toBe('a2');
    expect(latestLeafBelow(TREE, 'u1e')).toBe('a3');
    expect(latestLeafBelow(TREE, 'a2')).toBe('a2');
    expect(latestLeaf(TREE)).toBe('a3');
    expect(latestLeaf([])).toBeNull();
  });

  test('siblings share a parent (roots share none), the message itself included', () => {
    expect(ids(siblingsOf(TREE, 'a1b'))).toEqual(['a1', 'a1b']);
    expect(ids(siblingsOf(TREE, 'u1'))).toEqual(['u1', 'u1e']);
    expect(ids(siblingsOf(TREE, 'u2'))).toEqual(['u2']);
    expect(siblingsOf(TREE, 'nope')).toEqual([]);
  });
});

describe('‹ i/n › and switching branches', () => {
  test('only the turns with siblings get a position, counted from 1', () => {
    const positions = branchPositions(TREE, pathTo(TREE, 'a2'));
    expect([...positions]).toEqual([
      ['u1', { index: 1, count: 2 }],
      ['a1', { index: 1, count: 2 }],
    ]);
    expect([...branchPositions(TREE, pathTo(TREE, 'a3'))]).toEqual([['u1e', { index: 2, count: 2 }]]);
  });

  test('next and previous show the latest branch below the sibling', () => {
    expect(switchBranch(TREE, 'a1', 1)).toBe('a1b');
    // Back to a1: the conversation below it, to its end.
    expect(switchBranch(TREE, 'a1b', -1)).toBe('a2');
    // The edited question's original: its latest answer, the regenerated one.
    expect(switchBranch(TREE, 'u1e', -1)).toBe('a1b');
    expect(switchBranch(TREE, 'u1', 1)).toBe('a3');
  });

  test('no sibling that way: nothing to switch to', () => {
    expect(switchBranch(TREE, 'a1', -1)).toBeNull();
    expect(switchBranch(TREE, 'a1b', 1)).toBeNull();
    expect(switchBranch(TREE, 'u2', 1)).toBeNull();
    expect(switchBranch(TREE, 'nope', 1)).toBeNull();
  });
});
