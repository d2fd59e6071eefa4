// A thin layer over onnx-proto: just enough to write a graph as a list of nodes and initializers.
import onnxProto from 'onnx-proto'

const { onnx } = onnxProto

export const MS_DOMAIN = 'com.microsoft'
export const { TensorProto } = onnx

export type AttributeValue = number | string | number[]
export type DataType = 'float32' | 'int32' | 'int64' | 'uint8' | 'int8'

const elementType: Record<DataType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  int32: onnx.TensorProto.DataType.INT32,
  int64: onnx.TensorProto.DataType.INT64,
  uint8: onnx.TensorProto.DataType.UINT8,
  int8: onnx.TensorProto.DataType.INT8
}

/** A graph under construction: nodes in execution order, weights as initializers. */
export class GraphBuilder {
  readonly nodes: onnxProto.onnx.INodeProto[] = []
  readonly initializers: onnxProto.onnx.ITensorProto[] = []
  readonly inputs: onnxProto.onnx.IValueInfoProto[] = []
  readonly outputs: onnxProto.onnx.IValueInfoProto[] = []
  private counter = 0

  /** Adds a node and returns the names of its outputs (fresh names unless given). */
  node (opType: string, inputs: string[], attributes: Record<string, AttributeValue> = {}, options: { outputs?: number | string[], domain?: string, name?: string } = {}): string[] {
    const name = options.name ?? `${opType}_${this.counter++}`
    const outputs = Array.isArray(options.outputs)
      ? options.outputs
      : Array.from({ length: options.outputs ?? 1 }, (_, i) => `${name}/out${i}`)
    this.nodes.push({
      name,
      opType,
      domain: options.domain ?? '',
      input: inputs,
      output: outputs,
      attribute: Object.entries(attributes).map(([key, value]) => attribute(key, value))
    })
    return outputs
  }

  /** Adds a weight; `data` is kept by reference until `toBytes`. */
  initializer (name: string, type: DataType, dims: number[], data: ArrayBufferView): string {
    this.initializers.push({
      name,
      dataType: elementType[type],
      dims,
      rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    })
    return name
  }

  /** Adds a constant int64 vector (shapes, split sizes). */
  int64s (name: string, values: number[]): string {
    return this.initializer(name, 'int64', [values.length], BigInt64Array.from(values, BigInt))
  }

  /** Adds a weight whose bytes ORT reads from `location` (a file next to the model file). */
  externalInitializer (name: string, type: DataType, dims: number[], location: string, offset: number, length: number): string {
    this.initializers.push({
      name,
      dataType: elementType[type],
      dims,
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [{ key: 'location', value: location }, { key: 'offset', value: String(offset) }, { key: 'length', value: String(length) }]
    })
    return name
  }

  input (name: string, type: DataType, shape: Array<number | string>): string {
    this.inputs.push(valueInfo(name, type, shape))
    return name
  }

  output (name: string, type: DataType, shape: Array<number | string>): string {
    this.outputs.push(valueInfo(name, type, shape))
    return name
  }

  /** Serializes the graph as a ModelProto (opset 21 + com.microsoft 1). */
  toBytes (graphName: string): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 10,
      producerName: 'minga',
      opsetImport: [{ domain: '', version: 21 }, { domain: MS_DOMAIN, version: 1 }],
      graph: {
        name: graphName,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs
      }
    })
    return onnx.ModelProto.encode(model).finish()
  }
}

function attribute (name: string, value: AttributeValue): onnxProto.onnx.IAttributeProto {
  const { AttributeType } = onnx.AttributeProto
  if (typeof value === 'string') return { name, type: AttributeType.STRING, s: new TextEncoder().encode(value) }
  if (Array.isArray(value)) return { name, type: AttributeType.INTS, ints: value }
  if (Number.isInteger(value) && !Object.is(value, -0)) return { name, type: AttributeType.INT, i: value }
  return { name, type: AttributeType.FLOAT, f: value }
}

function valueInfo (name: string, type: DataType, shape: Array<number | string>): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: elementType[type],
        shape: { dim: shape.map(d => typeof d === 'number' ? { dimValue: d } : { dimParam: d }) }
      }
    }
  }
}
